"""One test body, two faces: `Face` runs the same steps against
`busbar.Connection` (blocking) and `busbar.aio.Connection` (asyncio), so the
two APIs cannot drift apart without a test failing.

A test calls the API as the face would be used and passes what it got to
`face.run(...)`: the blocking face returns values, which `run` passes
through; the asyncio face returns awaitables, which `run` awaits on the
face's event loop. Background work of the asyncio face (room handlers,
`on(...)` dispatchers) runs whenever the loop runs: `face.wait_until` and
`face.sleep` run it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Callable

import busbar
import busbar.aio

END = object()  # what face.next returns when a stream ended


async def _await(value: Any) -> Any:
    return await value


class Face:
    def __init__(self, name: str) -> None:
        self.name = name
        self.is_async = name == "async"
        self.module = busbar.aio if self.is_async else busbar
        self.Connection = self.module.Connection
        self.loop = asyncio.new_event_loop() if self.is_async else None

    def __repr__(self) -> str:
        return f"Face({self.name})"

    def run(self, value: Any) -> Any:
        if self.is_async:
            assert inspect.isawaitable(value), f"aio face returned {value!r}, not an awaitable"
            return self.loop.run_until_complete(_await(value))
        assert not inspect.isawaitable(value), f"blocking face returned an awaitable {value!r}"
        return value

    def connect(self, node: Any, **options: Any) -> Any:
        return self.run(self.Connection.from_config(node.data_dir / "admin.json", **options))

    def next(self, stream: Any) -> Any:
        """The next item of an iterator or async iterator, or END."""
        if self.is_async:
            try:
                return self.run(stream.__anext__())
            except StopAsyncIteration:
                return END
        try:
            return next(stream)
        except StopIteration:
            return END

    def iterate(self, stream: Any) -> Any:
        return stream.__aiter__() if self.is_async else iter(stream)

    def collect(self, stream: Any) -> list:
        items = []
        it = self.iterate(stream)
        while (item := self.next(it)) is not END:
            items.append(item)
        return items

    def sleep(self, seconds: float) -> None:
        if self.is_async:
            self.loop.run_until_complete(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)

    def database(self, conn: Any, path: str, *statements: str) -> Any:
        """Creates the database `path`, runs `statements` in it and returns
        its handle: the setup of most SQL tests."""
        self.run(conn.create(path, "database"))
        db = conn.sql(path)
        for statement in statements:
            self.run(db.execute(statement))
        return db

    def wait_until(self, condition: Callable[[], bool], timeout: float = 15.0,
                   what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.sleep(0.02)

    def close(self) -> None:
        if self.loop is not None:
            # Let callbacks already scheduled run, then close.
            self.loop.run_until_complete(asyncio.sleep(0))
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0.01))
            self.loop.close()
