"""The asyncio face: the same constructors, methods and arguments as
``busbar.Connection``; every method that talks to the node is awaited.

Rooms are the same :class:`busbar.Room` class; joined with an
``aio.Connection`` their handlers may be ``async def``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ._connection import Wire, _ConnectionBase
from ._mesh import AsyncProvider as Provider
from ._mesh import CallContext, context, interface, method
from ._rooms import Room, event, join_async
from ._session import AsyncSession as Session
from ._session import Opening
from ._sql import Database
from ._timeseries import TimeSeries
from ._transport import AsyncTransportMessage as TransportMessage
from ._transport import AsyncTransportSession as TransportSession
from ._streams import AsyncCall as Call
from ._streams import AsyncSubscription as Subscription


class Connection(_ConnectionBase):
    """An asyncio connection to a Busbar node (see ``busbar.Connection``)."""

    _ASYNC = True
    _CALL = Call
    _SUBSCRIPTION = Subscription
    _SESSION = Session
    _PROVIDER = Provider
    _TRANSPORT = TransportSession

    def provide(self, implementation: Any, *, concurrency: Optional[int] = None,
                timeout: Optional[float] = None) -> Any:
        """Offers the implementation's interfaces: ``provider = await
        conn.provide(impl)`` or ``async with conn.provide(impl) as provider:``;
        see ``busbar.Connection.provide``."""
        return Opening(super().provide(implementation, concurrency=concurrency,
                                       timeout=timeout))

    def session(self, *, timeout: Optional[float] = None) -> Any:
        """Opens a data session: ``async with conn.session() as s:`` (or
        ``s = await conn.session()``); see ``busbar.Connection.session``."""
        return Opening(super().session(timeout=timeout))

    def transport(self, session_id: str, metadata: Optional[Dict[str, str]] = None, *,
                  timeout: Optional[float] = None) -> Any:
        """Opens or joins a transport session: ``s = await
        conn.transport(id)`` (or ``async with``, which does not release
        it); see ``busbar.Connection.transport``."""
        return Opening(super().transport(session_id, metadata, timeout=timeout))

    @classmethod
    def _connect(cls, target: Any) -> Any:
        # ``async with Connection.from_config(p) as conn:`` and
        # ``conn = await Connection.from_config(p)`` both work.
        return Opening(super()._connect(target))

    @classmethod
    def _then(cls, result: Any, wrap: Callable[[Any], Any]) -> Any:
        async def then() -> Any:
            return wrap(await result)

        return then()

    @classmethod
    def _after(cls, first: Any, then: Callable[[], Any]) -> Any:
        async def after() -> Any:
            await first
            return await then()

        return after()

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    async def _join_room(self, room: Room, timeout: Optional[float]) -> Room:
        return await join_async(room, self._core, timeout)

    async def _publish(self, publisher: Any, chunks: Any) -> Any:
        try:
            if hasattr(chunks, "__aiter__"):
                async for chunk in chunks:
                    await publisher.send(chunk)
            else:
                for chunk in chunks:
                    await publisher.send(chunk)
        except BaseException:
            publisher.cancel()
            raise
        return await publisher.finish()


__all__ = ["Call", "CallContext", "Connection", "Database", "Opening", "Provider", "Room",
           "Session", "Subscription", "TimeSeries", "TransportMessage", "TransportSession", "Wire",
           "context", "event", "interface", "method"]
