"""Busbar for Python: one Rust core (busbar-client), two faces.

``busbar.Connection`` is the blocking face, safe to share between threads;
``busbar.aio.Connection`` is the asyncio face with the same constructors,
methods and arguments, whose methods are awaited and never block the event
loop. Both release the GIL while they wait on the network.

Data: ``conn.sql(db).execute/run`` (SQL and stored procedures),
``conn.session()`` (commit/rollback) and ``conn.timeseries`` (Arrow time
series), all returning ``pyarrow.Table``.

Mesh: ``@busbar.interface`` declares a service as a class,
``conn.provide(impl)`` serves it through the node, ``conn.remote(Iface)``
calls it, ``busbar.context()`` tells a handler about its call, and
``conn.transport(id)`` opens a transport session (per-topic queues:
``push``, ``pop``, ``peek``, ``release``).
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Optional

from . import _core, errors
from ._connection import Wire, _ConnectionBase
from ._core import __version__
from ._mesh import CallContext, Provider, context, interface, method
from ._rooms import Room, event, join_blocking
from ._session import Session
from ._sql import Database
from ._timeseries import TimeSeries
from ._transport import TransportMessage, TransportSession
from ._streams import Call, Subscription
from .errors import BusbarError, SessionReleased


def set_spin_limit(seconds: float) -> None:
    """Lets a call spin for its answer, at most ``seconds``, before it sleeps.

    Spinning is off by default (0). Turned on, a blocking call waits for its
    answer by spinning (GIL released) for an adaptive window of at most
    ``seconds``, then sleeps; an awaited call keeps its event loop turning for
    such a window instead of letting it sleep in its selector. It is opt-in
    because it spends your CPU, and it pays only on virtual machines whose
    host does not poll before halting an idle vCPU (halt-polling off): there
    waking a sleeping thread costs tens of microseconds, often most of a
    short call's round trip; elsewhere the kernel already does this. The
    window grows while answers come within the limit and shrinks when they do
    not, and one thread per process spins at a time. Stream reads and sends
    never spin. 0.0002 (200 us, Linux haltpoll's default) is a good limit; 0
    turns spinning off; at most 0.01. The environment variable
    ``BUSBAR_SPIN_LIMIT`` (seconds) sets it when busbar is imported. Raises
    ``busbar.errors.InvalidArgument`` (and keeps the old limit) for anything
    else."""
    _core.set_spin_limit(seconds)


def spin_limit() -> float:
    """The most a call spins before it sleeps, in seconds."""
    return _core.spin_limit()


def _spin_limit_from_environment() -> None:
    """``BUSBAR_SPIN_LIMIT`` (seconds; unset or empty: off) opts the whole
    process in to spinning without a code change; a bad value stops the
    import, naming the variable, rather than running without what was asked."""
    given = os.environ.get("BUSBAR_SPIN_LIMIT", "").strip()
    if not given:
        return
    try:
        _core.set_spin_limit(float(given))
    except (ValueError, errors.InvalidArgument) as error:
        why = error.message if isinstance(error, errors.InvalidArgument) else "not a number"
        raise errors.InvalidArgument(
            f"bad BUSBAR_SPIN_LIMIT={given!r} in the environment ({why}): use seconds from 0 "
            "to 0.01, e.g. 0.0002, or unset it to leave spinning off") from None


_spin_limit_from_environment()

# Before the interpreter finalizes, let runtime threads that are handing a
# result to an event loop finish (see bridge.rs).
atexit.register(_core.at_exit)


class Connection(_ConnectionBase):
    """A blocking connection to a Busbar node. Make one with
    :meth:`from_config`, :meth:`insecure` or :meth:`with_tls`; use it as a
    context manager or call :meth:`close`. Every method takes ``timeout=``
    (seconds) as the call's deadline; failures raise ``busbar.errors``."""

    _ASYNC = False
    _CALL = Call
    _SUBSCRIPTION = Subscription
    _SESSION = Session
    _PROVIDER = Provider
    _TRANSPORT = TransportSession

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _join_room(self, room: Room, timeout: Optional[float]) -> Room:
        return join_blocking(room, self._core, timeout)

    def _publish(self, publisher: Any, chunks: Any) -> Any:
        try:
            for chunk in chunks:
                publisher.send(chunk)
        except BaseException:
            publisher.cancel()
            raise
        return publisher.finish()


__all__ = [
    "BusbarError", "Call", "CallContext", "Connection", "Database", "Provider", "Room", "Session",
    "SessionReleased", "Subscription", "TimeSeries", "TransportMessage", "TransportSession", "Wire",
    "__version__", "context", "errors", "event", "interface", "method", "set_spin_limit",
    "spin_limit",
]
