"""SQL databases: ``conn.sql(path).execute(sql, params)`` → ``pyarrow.Table``.

Stored procedures (``run``) come with the server feature; this module is
where they will live.
"""

from __future__ import annotations

from typing import Any, Optional


def _with_summary(result: Any) -> Any:
    """The table, with the statement's summary in its schema metadata."""
    table, summary = result
    metadata = dict(table.schema.metadata or {})
    metadata[b"busbar.rows_affected"] = str(summary["rows_affected"]).encode()
    metadata[b"busbar.last_insert_rowid"] = str(summary["last_insert_rowid"]).encode()
    return table.replace_schema_metadata(metadata)


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
        bytes and datetime (naive = UTC; aware ones are converted to UTC).
        The schema metadata holds ``busbar.rows_affected`` and
        ``busbar.last_insert_rowid``.
        """
        conn = self.connection
        return conn._then(conn._core.sql(self.path, sql, params, timeout), _with_summary)
