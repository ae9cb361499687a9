"""Data sessions: ``with conn.session() as s:`` … ``s.commit()``.

Calls made through a session (``s.sql(db)``, ``s.timeseries``) see the
session's uncommitted changes; nobody else does until ``commit()``. Leaving
the ``with`` block without committing rolls the session back. The core
keeps the session alive while it is open; an abandoned one expires on the
node after its idle timeout.
"""

from __future__ import annotations

from typing import Any, Optional


class _SessionBase:
    def __init__(self, core_session: Any, connection_class: Any) -> None:
        self._session = core_session
        #: A connection whose data calls run in this session.
        self.connection = connection_class(core_session.core())

    @property
    def id(self) -> str:
        return self._session.id

    @property
    def ended(self) -> bool:
        return self._session.ended

    def sql(self, database: str) -> Any:
        """The database at ``database``, inside this session."""
        return self.connection.sql(database)

    @property
    def timeseries(self) -> Any:
        """Time series, inside this session."""
        return self.connection.timeseries

    def commit(self, *, timeout: Optional[float] = None) -> Any:
        """Makes every change durable and visible, and ends the session;
        returns how many databases and series it changed."""
        return self._session.end(True, timeout)

    def rollback(self, *, timeout: Optional[float] = None) -> Any:
        """Discards every change and ends the session."""
        return self._session.end(False, timeout)

    def __repr__(self) -> str:
        return f"<busbar.Session {self.id}{' ended' if self.ended else ''}>"


class Session(_SessionBase):
    """A data session of a blocking connection."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.ended:
            self.rollback()


class AsyncSession(_SessionBase):
    """A data session of an asyncio connection."""

    async def __aenter__(self) -> "AsyncSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if not self.ended:
            await self.rollback()


class Opening:
    """What the asyncio face's openers return (``aio.Connection.from_config``
    and the other constructors, ``conn.session()``): await it for the
    object, or use it directly in ``async with``, which opens it on enter
    and closes it on exit (``async with await ...`` works too)."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._opened: Any = None

    def __await__(self) -> Any:
        return self._opening.__await__()

    async def __aenter__(self) -> Any:
        self._opened = await self._opening
        return await self._opened.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        if self._opened is not None:
            await self._opened.__aexit__(*exc)
