"""SQL databases: ``conn.sql(path).execute(sql, params)`` and
``conn.sql(path).run(procedure, *args, **kwargs)`` → ``pyarrow.Table``."""

from __future__ import annotations

from typing import Any, Optional


class Database:
    """The SQL database at ``path`` (a DATABASE resource)."""

    def __init__(self, connection: Any, path: str) -> None:
        self.connection = connection
        self.path = path

    def __repr__(self) -> str:
        return f"<busbar.Database {self.path}>"

    def execute(self, sql: str, params: Any = None, *, timeout: Optional[float] = None) -> Any:
        """Runs one statement; returns its rows as a ``pyarrow.Table``.

        ``params`` binds values: a list or tuple for ``?`` placeholders, a
        dict for ``:name`` ones. Values may be None, bool, int, float, str,
        bytes, date and datetime (bound as epoch milliseconds UTC: a naive
        datetime is UTC, an aware one is converted, a date is its midnight
        UTC), and numpy scalars of those (``np.int64``, ``np.bool_``,
        ``np.float32``, ``np.datetime64``…).
        The schema metadata holds ``busbar.rows_affected`` and
        ``busbar.last_insert_rowid``.
        """
        return self.connection._core.sql(self.path, sql, params, timeout)

    def executemany(self, sql: str, rows: Any, *, timeout: Optional[float] = None) -> Any:
        """Runs one statement once per row of parameters (each a list, tuple
        or dict, as ``execute`` takes them), in one round trip and one
        transaction: every row takes effect or none does. Returns the summary
        (``rows_affected`` counts all rows). At most 100000 rows per call."""
        return self.connection._core.sql_many(self.path, sql, rows, timeout)

    def run(self, procedure: str, /, *args: Any, timeout: Optional[float] = None,
            **kwargs: Any) -> Any:
        """Runs a stored procedure with arguments by position or by name (not
        both); returns the rows of its last statement as a ``pyarrow.Table``.
        Its statements run atomically: if one fails, none took effect.
        (``timeout`` is this call's deadline, not an argument.)"""
        return self.connection._core.run_procedure(self.path, procedure, list(args) or None,
                                                   kwargs or None, timeout)

    def create_procedure(self, name: str, params: Any, body: str, *, replace: bool = False,
                         timeout: Optional[float] = None) -> Any:
        """Stores a procedure: ``body`` holds statements using ``:name``
        parameters from ``params`` (in positional order)."""
        return self.connection._core.create_procedure(self.path, name, list(params), body,
                                                      replace, timeout)

    def drop_procedure(self, name: str, *, timeout: Optional[float] = None) -> Any:
        return self.connection._core.drop_procedure(self.path, name, timeout)

    def procedures(self, *, timeout: Optional[float] = None) -> Any:
        """The database's procedures (name, params, body)."""
        return self.connection._core.procedures(self.path, timeout)
