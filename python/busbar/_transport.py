"""Transport sessions: ``session = conn.transport("order-42")``, then
``push``, ``pop``, ``peek`` and ``release`` (docs/mesh.md, "Transport
sessions"), written once for both faces.

Payloads are bytes (``bytes``, ``bytearray`` or ``memoryview``); metadata is
a dict of str to str: anything else raises TypeError before a call is made.
A pop waiting on a session when it is released (by any party, or its
resource deleted) raises :class:`busbar.SessionReleased`: the node answers
a pop FAILED_PRECONDITION for exactly that, so every FAILED_PRECONDITION of
a pop becomes one, whatever its message says (a closed connection's stays
``FailedPrecondition``). A pop started after the release raises NotFound.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Dict, Optional

from .errors import FailedPrecondition, InvalidArgument, SessionReleased

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _utc(ms: int) -> datetime.datetime:
    return _EPOCH + datetime.timedelta(milliseconds=ms)


def _topic(topic: Any) -> str:
    if not isinstance(topic, str):
        raise TypeError(f"a topic is a str, not {type(topic).__name__}")
    return topic


def _wait(seconds: Any, what: str) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} is a number of seconds, not {type(seconds).__name__}")
    if not 0 <= seconds <= 3600:
        raise InvalidArgument(f"bad {what} {seconds!r}: use 0 to 3600 seconds")
    return float(seconds)


class _TransportMessageBase:
    """A popped or peeked message."""

    def __init__(self, session: Any, found: Dict[str, Any]) -> None:
        self._session = session
        #: The message's id in the session (what ``push`` returned).
        self.id: int = found["id"]
        self.topic: str = found["topic"]
        self.payload: bytes = found["payload"]
        self.metadata: Dict[str, str] = dict(found["metadata"])
        #: When it was pushed (UTC, millisecond precision).
        self.pushed_at: datetime.datetime = _utc(found["pushed_ms"])
        #: A leased pop's receipt ("" otherwise).
        self.receipt: str = found["receipt"]
        #: When the lease ends (UTC), None unless leased.
        self.lease_expires: Optional[datetime.datetime] = (
            _utc(found["lease_expires_ms"]) if found["receipt"] else None)

    @property
    def leased(self) -> bool:
        return bool(self.receipt)

    def _settle(self, action: str, lease: float = 0.0) -> Any:
        if not self.receipt:
            raise InvalidArgument(f"message {self.id} is not leased: pop it with lease= "
                                  "to ack, nak or extend it")
        session = self._session
        done = session._connection._core.transport_settle(
            session.id, self.receipt, action, lease, None)
        return session._connection._then(done, lambda ends: self._settled(action, ends))

    def _settled(self, action: str, ends: int) -> None:
        if action == "extend":
            self.lease_expires = _utc(ends)

    def ack(self) -> Any:
        """Removes the leased message (NotFound once its lease ended)."""
        return self._settle("ack")

    def nak(self) -> Any:
        """Gives the leased message back, first in its queue."""
        return self._settle("nak")

    def extend(self, seconds: float) -> Any:
        """Moves the lease's end to ``seconds`` from now (``lease_expires``
        follows)."""
        return self._settle("extend", _wait(seconds, "lease"))

    def __repr__(self) -> str:
        lease = f" leased until {self.lease_expires:%H:%M:%S}" if self.lease_expires else ""
        return (f"<busbar.TransportMessage {self.id} topic={self.topic!r} "
                f"{len(self.payload)} bytes{lease}>")


class TransportMessage(_TransportMessageBase):
    """A popped or peeked message of a blocking connection."""


class AsyncTransportMessage(_TransportMessageBase):
    """A popped or peeked message of an asyncio connection: ``ack``,
    ``nak`` and ``extend`` are awaited."""


class _TransportSessionBase:
    """An open transport session."""

    _MESSAGE: Any = TransportMessage

    def __init__(self, connection: Any, opened: Dict[str, Any]) -> None:
        self._connection = connection
        #: The session id.
        self.id: str = opened["session"]
        #: Its resource: /transport/<id>.
        self.path: str = opened["path"]
        #: The metadata kept with the session when it was created.
        self.metadata: Dict[str, str] = dict(opened["metadata"])
        #: Whether this open created it.
        self.created: bool = opened["created"]

    def __repr__(self) -> str:
        return f"<busbar.TransportSession {self.id}>"

    def _then(self, result: Any, wrap: Callable[[Any], Any]) -> Any:
        return self._connection._then(result, wrap)

    def push(self, payload: Any, metadata: Optional[Dict[str, str]] = None,
             topic: str = "") -> Any:
        """Appends ``payload`` (bytes) to ``topic``'s queue, with
        ``metadata`` (str to str); returns the message's id once it is on
        the node's disk."""
        return self._connection._core.transport_push(self.id, _topic(topic), payload,
                                                     metadata, None)

    def _pop(self, timeout: Any, topic: Any, lease: Any) -> Any:
        wait = _wait(timeout, "timeout")
        leased = None if lease is None else _wait(lease, "lease")
        if leased is not None and leased <= 0:
            raise InvalidArgument(f"bad lease {lease!r}: use more than 0 seconds")
        topic = _topic(topic)
        conn = self._connection
        pop = conn._core.transport_pop
        if conn._ASYNC:
            async def popped() -> Any:
                try:
                    return await pop(self.id, topic, wait, leased, None)
                except FailedPrecondition as error:
                    raise self._released(error) from None

            return popped()
        try:
            return pop(self.id, topic, wait, leased, None)
        except FailedPrecondition as error:
            raise self._released(error) from None

    def _released(self, error: FailedPrecondition) -> BaseException:
        if self._connection.closed:
            return error
        return SessionReleased(error.message, code=error.code, trace_id=error.trace_id)

    def pop(self, timeout: float = 0.0, topic: str = "") -> Any:
        """Takes the oldest payload of ``topic``, waiting up to ``timeout``
        seconds (at most 300) for one; None when none came. Raises
        SessionReleased when the session is released while it waits."""
        return self._then(self._pop(timeout, topic, None),
                          lambda found: None if found is None else found["payload"])

    def pop_message(self, timeout: float = 0.0, topic: str = "",
                    lease: Optional[float] = None) -> Any:
        """As ``pop``, but the whole message (payload, metadata, id,
        pushed_at); with ``lease`` (seconds, at most 3600) the message is
        leased, not removed: ``ack()`` it, ``nak()`` it, or it comes back
        when the lease ends (at-least-once)."""
        return self._then(self._pop(timeout, topic, lease), self._message)

    def _message(self, found: Optional[Dict[str, Any]]) -> Any:
        return None if found is None else self._MESSAGE(self, found)

    def peek(self, topic: str = "") -> Any:
        """The oldest payload of ``topic``, left in place; None when empty.
        Does not wait."""
        return self._then(self._connection._core.transport_peek(self.id, _topic(topic), None),
                          lambda found: None if found is None else found["payload"])

    def peek_message(self, topic: str = "") -> Any:
        """As ``peek``, but the whole message."""
        return self._then(self._connection._core.transport_peek(self.id, _topic(topic), None),
                          self._message)

    def release(self) -> Any:
        """Ends the session for every party (admin on it: its creator):
        its queues are dropped, its resource deleted, and waiting pops
        raise SessionReleased. Returns how many messages were dropped."""
        return self._connection._core.transport_release(self.id, None)


class TransportSession(_TransportSessionBase):
    """A transport session of a blocking connection. As a context manager
    it releases nothing on exit: ``release()`` is explicit."""

    _MESSAGE = TransportMessage

    def __enter__(self) -> "TransportSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class AsyncTransportSession(_TransportSessionBase):
    """A transport session of an asyncio connection: every method is awaited."""

    _MESSAGE = AsyncTransportMessage

    async def __aenter__(self) -> "AsyncTransportSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pass

