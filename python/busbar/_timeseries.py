"""Time series: ``conn.timeseries.read/write/create/describe``.

Points are tables of ``utc_time: timestamp[ms, tz=UTC]``, ``flags: uint32``,
``value: float64``. Reads return ``pyarrow.Table``; writes take a
``pyarrow.Table`` (or anything with ``__arrow_c_stream__``) or a pandas
DataFrame. Times given to ``read``/``write`` may be datetimes (naive = UTC,
aware ones converted), ISO 8601 strings (no offset = UTC) or epoch
milliseconds.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, List, Optional, Sequence, Union

from ._bridge import epoch_ms
from .errors import InvalidArgument

#: Flag bits of the ``flags`` column (0 is OK).
OK = 0
MISSING = 1
SUSPECT = 2
NOT_OK = 4



def _ms(moment: Any, what: str) -> Optional[int]:
    """A time as epoch milliseconds UTC."""
    if moment is None:
        return None
    if isinstance(moment, bool):
        raise InvalidArgument(f"bad {what} {moment!r}: use a datetime, an ISO 8601 string or epoch ms")
    if isinstance(moment, int):
        return moment
    if isinstance(moment, str):
        text = moment.strip().replace("Z", "+00:00").replace("z", "+00:00")
        try:
            moment = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(f"bad {what} {moment!r}: use ISO 8601 such as "
                                  "2026-03-29T01:00:00+02:00 (no offset means UTC)") from None
    if isinstance(moment, _dt.datetime):
        return epoch_ms(moment)
    if isinstance(moment, _dt.date):
        return epoch_ms(_dt.datetime(moment.year, moment.month, moment.day))
    raise InvalidArgument(f"bad {what} {moment!r}: use a datetime, an ISO 8601 string or epoch ms")


def _points(data: Any) -> Any:
    """A pyarrow table of points from a pyarrow table or a pandas DataFrame
    (whose ``utc_time`` may be its DatetimeIndex); a missing ``flags``
    column means OK. A null (pandas: NaN) value is a missing point: the node
    stores NaN with the MISSING flag. Column errors name the caller's
    columns, before the SDK adds any."""
    import pyarrow as pa

    if type(data).__name__ == "DataFrame" and hasattr(data, "to_numpy"):
        if "utc_time" not in data.columns and type(data.index).__name__ == "DatetimeIndex":
            frame = data.copy(deep=False)
            frame.insert(0, "utc_time", data.index)
            data = frame
        data = pa.Table.from_pandas(data, preserve_index=False)
    elif not isinstance(data, pa.Table):
        if not hasattr(data, "__arrow_c_stream__"):
            raise InvalidArgument("write a pyarrow.Table (or any Arrow stream) or a pandas "
                                  f"DataFrame, not a {type(data).__name__}")
        # Not pa.table(data): it imports pandas to ask whether data is a DataFrame.
        data = pa.RecordBatchReader.from_stream(data).read_all()
    names = data.column_names
    unknown = [name for name in names if name not in ("utc_time", "flags", "value")]
    absent = [name for name in ("utc_time", "value") if name not in names]
    if unknown or absent or len(set(names)) != len(names):
        raise InvalidArgument(
            f"the table has columns {', '.join(names) or 'none'}; points have utc_time "
            "(a timestamp, or a DataFrame's DatetimeIndex), value (a number; null or NaN "
            "for a missing point) and optionally flags (whole numbers; none means OK)")
    if "flags" not in names:
        index = names.index("utc_time") + 1
        # OK is 0: a zeroed buffer, with no Python object per row (and no
        # pa.array/pa.scalar, which import pandas).
        ok = pa.Array.from_buffers(pa.uint32(), data.num_rows,
                                   [None, pa.py_buffer(bytes(4 * data.num_rows))])
        data = data.add_column(index, "flags", ok)
    return data


class TimeSeries:
    """The time series of a connection (``conn.timeseries``)."""

    #: Flag bits of the ``flags`` column.
    OK = OK
    MISSING = MISSING
    SUSPECT = SUSPECT
    NOT_OK = NOT_OK

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def create(self, path: str, *, resolution: str, unit: str = "", curve: str = "staircase",
               time_zone: Optional[str] = None, parents: bool = False, exist_ok: bool = False,
               timeout: Optional[float] = None) -> Any:
        """Creates a series. ``resolution``: breakpoint, 1min, 5min, 10min,
        15min, 30min, hour, day, week, month or year; ``curve``: staircase or
        linear; ``time_zone``: an IANA name for the series' calendar (UTC if
        None). The other spellings ``describe()`` and ``busbar ts ls`` show
        (``MIN15``, ``min15``, ``PIECEWISE_LINEAR``) are accepted too, in any
        case. With ``exist_ok`` an existing series of the same definition is
        returned instead of raising AlreadyExists."""
        if not isinstance(resolution, str) or not isinstance(curve, str):
            raise InvalidArgument("resolution and curve are names such as '15min' and 'linear'")
        return self.connection._core.create_series(path, resolution, unit, curve, time_zone,
                                                   parents, exist_ok, timeout)

    def describe(self, path: str, *, timeout: Optional[float] = None) -> Any:
        """A series' definition, point count and first and last times (in a
        session: as the session sees them)."""
        return self.connection._core.describe_series(path, timeout)

    def read(self, path: Union[str, Sequence[str]], start: Any = None, end: Any = None, *,
             timeout: Optional[float] = None) -> Any:
        """The points in ``[start, end)`` as a ``pyarrow.Table`` (for a list
        of paths: a list of tables, in that order). Open ends reach the first
        or last point."""
        many = not isinstance(path, str)
        paths: List[str] = [path] if isinstance(path, str) else list(path)
        conn = self.connection
        tables = conn._core.read_series(paths, _ms(start, "start"), _ms(end, "end"), timeout)
        return conn._then(tables, lambda found: found if many else found[0])

    def write(self, path: str, table: Any, start: Any = None, end: Any = None, *,
              timeout: Optional[float] = None) -> Any:
        """Replaces ``[start, end)`` of a series with the table's points
        (default interval: the table's first timestamp to just past its
        last). Returns points_written, points_deleted and the interval. A bad
        row rejects the whole write with InvalidArgument naming it."""
        conn = self.connection
        return conn._core.write_series(path, _points(table), _ms(start, "start"),
                                       _ms(end, "end"), timeout)
