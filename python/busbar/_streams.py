"""Streaming calls and wire subscriptions, for both faces.

What arrives before anything reads it waits in the Rust client: up to 64
messages of a call (then the server is slowed down through HTTP/2 flow
control); a wire subscription or room membership is buffered by the node,
which cuts a consumer that falls too far behind (SlowConsumer). Nothing is
dropped on the client side.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Callable, Dict, List, Optional

from .errors import BusbarError, InvalidArgument

log = logging.getLogger("busbar")

_KINDS = ("data", "error", "end")

#: Messages kept for a 'data' handler attached after the stream started (an
#: 'error' or 'end' handler, or wait(), started it); past this they are
#: dropped, and the drop is logged.
_HELD = 64


class _Handlers:
    """``.on(kind)`` registrations and the once-only end of a stream."""

    def __init__(self) -> None:
        self._handlers: Dict[str, List[Callable[..., Any]]] = {kind: [] for kind in _KINDS}
        self._mode: Optional[str] = None  # "iterate" or "handlers": who reads
        self._finished = False
        self.error: Optional[BaseException] = None
        self._held: List[Any] = []
        self._dropped = 0

    def _hold(self, message: Any) -> None:
        """Keeps a message no 'data' handler is there for yet (bounded)."""
        if len(self._held) < _HELD:
            self._held.append(message)
            return
        self._dropped += 1
        if self._dropped == 1:
            log.warning("busbar stream: no 'data' handler; dropping messages past the first %d",
                        _HELD)

    def _take_held(self, kind: str) -> List[Any]:
        """The held messages, for the first 'data' handler just registered."""
        if kind != "data" or len(self._handlers["data"]) != 1:
            return []
        held, self._held = self._held, []
        return held

    def _claim(self, mode: str) -> None:
        if self._mode not in (None, mode):
            reader = "iteration" if self._mode == "iterate" else "on('data') handlers"
            raise InvalidArgument(f"this stream is already read by {reader}; "
                                  "use one or the other")
        self._mode = mode

    def _register(self, kind: str, handler: Callable[..., Any]) -> bool:
        """Adds a handler; True when handlers now read the stream and it
        must start: any first handler does (an 'error' or 'end' handler
        alone too), unless iteration reads it ('error' and 'end' handlers
        then run at its end)."""
        if kind not in _KINDS:
            raise InvalidArgument(f"bad event {kind!r}: use 'data', 'error' or 'end'")
        if not callable(handler):
            raise InvalidArgument("a handler must be callable")
        start = self._start_for_wait()
        if kind == "data":
            self._claim("handlers")
        self._handlers[kind].append(handler)
        return start

    def _start_for_wait(self) -> bool:
        """Handlers (or ``wait()``) read a stream nobody reads yet; True
        when it must start."""
        if self._mode is None:
            self._claim("handlers")
            return True
        return False

    def _raise_unhandled(self) -> None:
        """After the end: an error no 'error' handler took is raised."""
        if self._finished and self.error is not None and not self._handlers["error"]:
            raise self.error

    def _ending(self, error: Optional[BaseException]) -> List[Callable[..., Any]]:
        """The handlers to run for the end (only the first time)."""
        if self._finished:
            return []
        self._finished = True
        self.error = error
        if error is not None:
            if not self._handlers["error"] and self._mode == "handlers":
                log.error("busbar stream failed with no 'error' handler: %s", error)
            return [lambda h=h: h(error) for h in self._handlers["error"]]
        return list(self._handlers["end"])


class _CallEnds(_Handlers):
    """What both faces' streaming calls do the same: end the request side,
    cancel the whole call (neither waits)."""

    def __init__(self, core: Any) -> None:
        super().__init__()
        self._core = core

    def end(self) -> None:
        self._core.end()

    def cancel(self) -> None:
        self._core.cancel()


class Call(_CallEnds):
    """A streaming call (blocking face): iterate it for responses, or attach
    ``.on("data" | "error" | "end")`` handlers, which run on a thread of
    their own. ``send`` more requests, ``end()`` the request side,
    ``cancel()`` the whole call."""

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        # Reentrant: a handler may attach another. Held messages are replayed
        # under it, so the pump's next message waits for the replay.
        self._lock = threading.RLock()
        self._thread: Optional[threading.Thread] = None

    def send(self, message: Dict[str, Any]) -> None:
        self._core.send(message)

    def __iter__(self) -> "Call":
        self._claim("iterate")
        return self

    def __next__(self) -> Dict[str, Any]:
        message = self._read()
        if message is None:
            raise StopIteration
        return message

    def _read(self) -> Optional[Dict[str, Any]]:
        """The next response; None at the end. The end, or a failure
        (raised), is first told to the handlers."""
        try:
            message = self._core.next()
        except BusbarError as error:
            self._finish(error)
            raise
        if message is None:
            self._finish(None)
        return message

    def _finish(self, error: Optional[BaseException]) -> None:
        with self._lock:
            handlers = self._ending(error)
        for handler in handlers:
            run_handler(handler)

    def on(self, kind: str, handler: Optional[Callable[..., Any]] = None) -> Any:
        """Registers ``handler`` for ``kind``; without it, a decorator."""
        if handler is None:
            return lambda h: self.on(kind, h)
        with self._lock:
            start = self._register(kind, handler)
            for message in self._take_held(kind):
                run_handler(handler, message)
        if start:
            self._start()
        return handler

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._pump, name="busbar-call", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                message = self._read()
            except BusbarError:
                return
            if message is None:
                return
            with self._lock:
                handlers = list(self._handlers["data"])
                if not handlers:
                    self._hold(message)
            for handler in handlers:
                run_handler(handler, message)

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until the handlers have seen the end of the call (starting
        it if nothing reads it yet); raises its error if no 'error' handler
        took it."""
        with self._lock:
            start = self._start_for_wait()
        if start:
            self._start()
        if self._thread is not None:
            self._thread.join(timeout)
        self._raise_unhandled()


class AsyncCall(_CallEnds):
    """A streaming call (asyncio face): ``async for`` over it, or attach
    ``.on(...)`` handlers (plain or ``async def``), run by a task."""

    def __init__(self, core: Any) -> None:
        super().__init__(core)
        self._task: Optional["asyncio.Task[None]"] = None
        self._replay: Optional["asyncio.Task[None]"] = None
        # Made by an awaited conn.stream(): handlers run on that loop.
        self._loop = asyncio.get_running_loop()

    async def send(self, message: Dict[str, Any]) -> None:
        await self._core.send(message)

    def __aiter__(self) -> "AsyncCall":
        self._claim("iterate")
        return self

    async def __anext__(self) -> Dict[str, Any]:
        message = await self._read()
        if message is None:
            raise StopAsyncIteration
        return message

    async def _read(self) -> Optional[Dict[str, Any]]:
        """The next response; None at the end. The end, or a failure
        (raised), is first told to the handlers."""
        try:
            message = await self._core.next()
        except BusbarError as error:
            await self._finish(error)
            raise
        if message is None:
            await self._finish(None)
        return message

    async def _finish(self, error: Optional[BaseException]) -> None:
        for handler in self._ending(error):
            await run_async_handler(handler)

    def on(self, kind: str, handler: Optional[Callable[..., Any]] = None) -> Any:
        """Registers ``handler`` for ``kind``; without it, a decorator."""
        if handler is None:
            return lambda h: self.on(kind, h)
        start = self._register(kind, handler)
        held = self._take_held(kind)
        if held:
            self._replay = self._loop.create_task(self._replay_held(handler, held))
        if start:
            self._task = self._loop.create_task(self._pump())
        return handler

    async def _replay_held(self, handler: Callable[..., Any], held: List[Any]) -> None:
        for message in held:
            await run_async_handler(handler, message)

    async def _pump(self) -> None:
        while True:
            try:
                message = await self._read()
            except BusbarError:
                return
            if message is None:
                return
            if self._replay is not None:  # held messages go first
                await self._replay
            if not self._handlers["data"]:
                self._hold(message)
            for handler in list(self._handlers["data"]):
                await run_async_handler(handler, message)

    async def wait(self, timeout: Optional[float] = None) -> None:
        """Waits until the handlers have seen the end of the call (starting
        it if nothing reads it yet); raises its error if no 'error' handler
        took it."""
        if self._start_for_wait():
            self._task = self._loop.create_task(self._pump())
        if self._task is not None:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        self._raise_unhandled()


def run_handler(handler: Callable[..., Any], *args: Any) -> None:
    """Runs a handler of the blocking face; its failure is logged, the stream goes on."""
    try:
        if inspect.isawaitable(handler(*args)):
            raise InvalidArgument(f"{handler!r} is async: async handlers need busbar.aio")
    except Exception:
        log.exception("busbar handler %r failed", handler)


async def run_async_handler(handler: Callable[..., Any], *args: Any) -> None:
    """Runs a plain or async handler of the asyncio face; failures are logged."""
    try:
        result = handler(*args)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("busbar handler %r failed", handler)


class _Subscribed:
    """What both faces of a wire subscription share."""

    def __init__(self, core: Any) -> None:
        self._core = core

    @property
    def resubscribed(self) -> int:
        """How often a resuming subscription (``subscribe(resume=True)``) was
        opened again after a lost connection: chunks published meanwhile
        were missed."""
        return int(self._core.resubscribed)

    def close(self) -> None:
        """Ends the subscription; iteration stops."""
        self._core.close()


class Subscription(_Subscribed):
    """A wire subscription (blocking face): iterate it for byte chunks."""

    def __iter__(self) -> "Subscription":
        return self

    def __next__(self) -> bytes:
        chunk = self._core.next()
        if chunk is None:
            raise StopIteration
        return chunk

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncSubscription(_Subscribed):
    """A wire subscription (asyncio face): ``async for`` byte chunks."""

    def __aiter__(self) -> "AsyncSubscription":
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._core.next()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    async def __aenter__(self) -> "AsyncSubscription":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
