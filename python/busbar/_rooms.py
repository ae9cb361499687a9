"""Rooms: subclass :class:`Room`, mark handlers with :func:`event`, join.

One class serves both faces: ``room.join(conn)`` with a blocking
``busbar.Connection`` runs handlers on a thread of the room's own; with a
``busbar.aio.Connection`` it is awaited and handlers (plain or
``async def``) run in a task on the event loop. Either way handlers of one
room run one at a time, in the order the events were emitted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

from ._streams import run_async_handler, run_handler
from .errors import BusbarError, FailedPrecondition, InvalidArgument

log = logging.getLogger("busbar")

F = TypeVar("F", bound=Callable[..., Any])


def event(name: str) -> Callable[[F], F]:
    """Marks a :class:`Room` method as the handler of event ``name``; it is
    called with the event's arguments."""
    if not isinstance(name, str) or not name:
        raise InvalidArgument("an event name is a non-empty str")

    def mark(method: F) -> F:
        method.__busbar_event__ = name  # type: ignore[attr-defined]
        return method

    return mark


class Room:
    """A room at ``path``. Override the lifecycle hooks you need:

    - ``on_init()``: once, before the first ``on_join``;
    - ``on_join()``: after every join, including automatic rejoins after the
      connection dropped or the node restarted (events emitted while away
      are missed). No event is delivered before the first ``on_join``
      returns;
    - ``on_leave()``: after ``leave()``; ``on_delete()``: the room was deleted;
    - ``on_emit(event, *args)``: events that have no ``@event`` handler;
    - ``on_error(error)``: the membership ended with an error (e.g.
      SlowConsumer, PermissionDenied).
    """

    _event_methods: Dict[str, str] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found: Dict[str, str] = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                name = getattr(value, "__busbar_event__", None)
                if name is not None:
                    found[name] = attr
        cls._event_methods = found

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: Optional[BaseException] = None
        self._membership: Any = None
        self._initialized = False
        self._worker: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"

    # hooks -------------------------------------------------------------------
    def on_init(self) -> Any:
        """Called once, before the first ``on_join``."""

    def on_join(self) -> Any:
        """Called after every join (first join and every rejoin)."""

    def on_leave(self) -> Any:
        """Called after this member left."""

    def on_delete(self) -> Any:
        """Called when the room was deleted."""

    def on_emit(self, event: str, *args: Any) -> Any:
        """Called for events without an ``@event`` handler."""

    def on_error(self, error: BaseException) -> Any:
        """Called when the membership ends with an error."""
        log.error("busbar room %s ended: %s", self.path, error)

    # actions -------------------------------------------------------------------
    def join(self, connection: Any, *, create: bool = False,
             timeout: Optional[float] = None) -> Any:
        """Joins with ``connection``; returns the room (awaitable with
        ``busbar.aio.Connection``). Events emitted after this returns reach
        the room. With ``create`` the room is made first unless it exists."""
        if self._membership is not None:
            raise FailedPrecondition(f"{self!r} is already joined; leave() first")
        if not create:
            return connection._join_room(self, timeout)
        made = connection.create(self.path, "room", exist_ok=True, timeout=timeout)
        return connection._after(made, lambda: connection._join_room(self, timeout))

    def _member(self) -> Any:
        if self._membership is None:
            raise FailedPrecondition(f"{self!r} is not joined: call join(connection) first")
        return self._membership

    @property
    def member_id(self) -> str:
        """This membership's id (changes when it rejoins)."""
        return self._member().member_id

    def emit(self, event: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Emits ``event`` to every member, this one included; returns how many it reached."""
        return self._member().emit(event, list(args), False, timeout)

    def emit_peers(self, event: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Emits ``event`` to every member but this one."""
        return self._member().emit(event, list(args), True, timeout)

    def leave(self, *, timeout: Optional[float] = None) -> Any:
        """Leaves the room; ``on_leave`` runs when the server confirms.
        Returns None (awaitable with ``busbar.aio.Connection``)."""
        leaving = self._member().leave(timeout)
        if not inspect.isawaitable(leaving):
            return None

        async def left() -> None:
            await leaving

        return left()

    # dispatch ------------------------------------------------------------------
    def _handler(self, item: Tuple[str, str, list, str]) -> Tuple[Callable[..., Any], tuple, bool]:
        """The hook for one event, its arguments, and whether the membership ends."""
        kind, name, args, _sender = item
        if kind == "rejoined":
            return self.on_join, (), False
        if kind == "left":
            return self.on_leave, (), True
        if kind == "deleted":
            return self.on_delete, (), True
        method = self._event_methods.get(name)
        if method is not None:
            return getattr(self, method), tuple(args), False
        return self.on_emit, (name, *args), False

    def _attach(self, membership: Any) -> list:
        """Records the membership; the hooks to run before events flow."""
        self._membership = membership
        self.error = None
        hooks = [] if self._initialized else [self.on_init]
        self._initialized = True
        return hooks + [self.on_join]

    def _ended(self) -> None:
        self._membership = None

    def _step(self, item: Any) -> Tuple[Callable[..., Any], tuple, bool]:
        """What to run for one read of the membership: an event, its end
        (None) or the error that ended it."""
        if isinstance(item, BusbarError):
            self._ended()
            self.error = item
            return self.on_error, (item,), True
        if item is None:
            self._ended()
            return _nothing, (), True
        hook, args, last = self._handler(item)
        if last:
            self._ended()
        return hook, args, last

    def _pump_blocking(self, membership: Any) -> None:
        last = False
        while not last:
            try:
                item = membership.next()
            except BusbarError as error:
                item = error
            hook, args, last = self._step(item)
            run_handler(hook, *args)

    async def _pump_async(self, membership: Any) -> None:
        last = False
        while not last:
            try:
                item = await membership.next()
            except BusbarError as error:
                item = error
            hook, args, last = self._step(item)
            await run_async_handler(hook, *args)

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Waits until the membership ends (left, deleted or failed);
        awaitable in the asyncio face."""
        worker = self._worker
        if isinstance(worker, threading.Thread):
            worker.join(timeout)
            return None
        if worker is None:
            return _done()

        return asyncio.wait_for(asyncio.shield(worker), timeout)


async def _done() -> None:
    return None


def _nothing() -> None:
    return None


def join_blocking(room: Room, core: Any, timeout: Optional[float]) -> Room:
    membership = core.open("room", room.path, timeout)
    for hook in room._attach(membership):
        hook()
    room._worker = threading.Thread(target=room._pump_blocking, args=(membership,),
                                    name=f"busbar-room {room.path}", daemon=True)
    room._worker.start()
    return room


async def join_async(room: Room, core: Any, timeout: Optional[float]) -> Room:
    membership = await core.open("room", room.path, timeout)
    for hook in room._attach(membership):
        result = hook()
        if inspect.isawaitable(result):
            await result
    room._worker = asyncio.get_running_loop().create_task(room._pump_async(membership))
    return room
