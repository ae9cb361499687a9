"""Helpers the Rust core calls back into (not public)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import weakref
from typing import Any, Optional

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
    (as cancelling the awaiting task does) aborts the call's work on Busbar's
    runtime. An override rather than a done callback: each callback costs the
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


_doorbells: "weakref.WeakKeyDictionary[Any, Optional[_core.Doorbell]]" = weakref.WeakKeyDictionary()


def doorbell(loop: Any) -> Optional[_core.Doorbell]:
    """The loop's doorbell (made on first use): awaited work finished on
    Busbar's runtime is queued there and wakes the loop through a pipe the
    loop watches. None for a loop that cannot watch a pipe (such as Windows'
    proactor loop); results then come through ``call_soon_threadsafe``."""
    try:
        return _doorbells[loop]
    except KeyError:
        pass
    except TypeError:  # a loop without weak references: not cached
        return None
    bell = _core.Doorbell()
    try:
        loop.add_reader(bell.fileno(), bell.drain)
    except NotImplementedError:
        _doorbells[loop] = None
        return None
    _doorbells[loop] = bell
    return bell


def epoch_ms(moment: _dt.datetime) -> int:
    """Milliseconds since the epoch, UTC: a naive datetime is taken as UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return (moment - _EPOCH) // _MS


def sql_param(value: Any) -> tuple[str, Any]:
    """Parameters the Rust side does not recognise directly, tagged."""
    if isinstance(value, _dt.datetime):
        return ("timestamp_ms", epoch_ms(value))
    if isinstance(value, (bytearray, memoryview)):
        return ("blob", bytes(value))
    return ("unsupported", None)
