"""Helpers the Rust core calls back into (not public)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import time
import weakref
from typing import Any, Callable, Optional

from . import _core

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_MS = _dt.timedelta(milliseconds=1)


def resolve(future: Any, error: BaseException | None, value: Any) -> None:
    """Settles an asyncio future once, in its loop (a cancelled one stays cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Awaited(asyncio.Future):  # type: ignore[type-arg]
    """The future an awaited call of the asyncio face waits on. Cancelling it
    (as cancelling the awaiting task does) aborts the call's work, on the
    loop's executor or Busbar's runtime. An override rather than a done callback: each callback costs the
    event loop one more handle to run for every await, cancelled or not."""

    __slots__ = ("abort",)
    abort: Any  # set by the Rust side once the work is spawned

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        abort = getattr(self, "abort", None)
        if abort is not None:
            abort()
        return True


_spinning: "weakref.WeakSet[Any]" = weakref.WeakSet()


def spin(loop: Any, future: Any, window_s: float) -> None:
    """Keeps ``loop`` turning for up to ``window_s`` while ``future`` is not
    done: a callback that schedules itself again makes each turn poll the
    selector without sleeping, so the answer's readiness is seen without
    the loop's thread having slept (see busbar_client::spin). Other
    callbacks and tasks run as usual meanwhile; one spin per loop at a time."""
    if loop in _spinning:
        return
    _spinning.add(loop)
    until = time.perf_counter() + window_s

    def turn() -> None:
        if future.done() or time.perf_counter() >= until:
            _spinning.discard(loop)
        else:
            loop.call_soon(turn)

    loop.call_soon(turn)


def _watched(cache: "weakref.WeakKeyDictionary[Any, Any]", loop: Any,
             make: Callable[[], Any], callback: str) -> Any:
    """The loop's object from ``make`` (made on first use and cached per
    loop), its descriptor watched by the loop with its ``callback`` method.
    None when ``make`` gives None or the loop cannot watch a descriptor
    (such as Windows' proactor loop)."""
    try:
        return cache[loop]
    except KeyError:
        pass
    except TypeError:  # a loop without weak references: not cached
        return None
    made = make()
    if made is not None:
        try:
            loop.add_reader(made.fileno(), getattr(made, callback))
        except NotImplementedError:
            made = None
    cache[loop] = made
    return made


_doorbells: "weakref.WeakKeyDictionary[Any, Optional[_core.Doorbell]]" = weakref.WeakKeyDictionary()


def doorbell(loop: Any) -> Optional[_core.Doorbell]:
    """The loop's doorbell: awaited work finished on Busbar's runtime is
    queued there and wakes the loop through a pipe the loop watches. None
    for a loop that cannot watch a pipe; results then come through
    ``call_soon_threadsafe``."""
    return _watched(_doorbells, loop, _core.Doorbell, "drain")


_loop_execs: "weakref.WeakKeyDictionary[Any, Optional[_core.LoopExec]]" = weakref.WeakKeyDictionary()


def loop_exec(loop: Any) -> Optional[_core.LoopExec]:
    """The loop's executor: asyncio connections opened in this loop run
    their socket and background work on its thread, and awaited work is
    polled there. None for a loop that cannot watch a descriptor, or with
    BUSBAR_ASYNCIO_IO=runtime: Busbar's runtime thread does that work then."""
    def make() -> Optional[_core.LoopExec]:
        if os.environ.get("BUSBAR_ASYNCIO_IO", "loop") == "runtime":
            return None
        return _core.LoopExec(loop)

    return _watched(_loop_execs, loop, make, "ring")


def epoch_ms(moment: _dt.datetime) -> int:
    """Milliseconds since the epoch, UTC: a naive datetime is taken as UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return (moment - _EPOCH) // _MS


def sql_param(value: Any) -> tuple[str, Any]:
    """Parameters the Rust side does not recognise directly, tagged: dates
    and datetimes (epoch ms UTC; a date is its midnight UTC), bytes-likes,
    and numpy scalars (by their Python value; numpy is not imported)."""
    if isinstance(value, _dt.datetime):
        return ("timestamp_ms", epoch_ms(value))
    if isinstance(value, _dt.date):
        return ("timestamp_ms", epoch_ms(_dt.datetime(value.year, value.month, value.day)))
    if isinstance(value, (bytearray, memoryview)):
        return ("blob", bytes(value))
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        if type(value).__name__ == "datetime64":
            if str(value) == "NaT":
                return ("null", None)
            return ("timestamp_ms", int(value.astype("datetime64[ms]").astype("int64")))
        plain = value.item()
        if isinstance(plain, bool):
            return ("bool", plain)
        if isinstance(plain, int):
            return ("int", plain)
        if isinstance(plain, float):
            return ("real", plain)
        if isinstance(plain, (str, bytes)):
            return ("text" if isinstance(plain, str) else "blob", plain)
    return ("unsupported", None)
