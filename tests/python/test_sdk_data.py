"""Data from Python, one body per test for both faces: stored procedures,
sessions (isolation, commit, rollback on exit), and time series with
pyarrow and pandas inputs and every kind of time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid

import pandas as pd
import pyarrow as pa
import pytest

import busbar
from busbar import errors
from conftest import clean_env

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)


from test_sdk import home  # noqa: F401  (shared fixtures; face and conn are in conftest)


def bank(face, conn, home):
    return face.database(
        conn, f"{home}/bank",
        "CREATE TABLE accounts (name TEXT PRIMARY KEY, "
        "balance INTEGER NOT NULL CHECK (balance >= 0))",
        "INSERT INTO accounts VALUES ('alice', 100), ('bob', 0)")


def balances(face, db):
    table = face.run(db.execute("SELECT balance FROM accounts ORDER BY name"))
    return table.column("balance").to_pylist()


def test_procedures_by_position_or_name_run_atomically(face, conn, home):
    db = bank(face, conn, home)
    face.run(db.create_procedure(
        "transfer", ["src", "dst", "amount"],
        "UPDATE accounts SET balance = balance + :amount WHERE name = :dst;"
        "UPDATE accounts SET balance = balance - :amount WHERE name = :src;"
        "SELECT name, balance FROM accounts ORDER BY name"))
    table = face.run(db.run("transfer", "alice", "bob", 30))
    assert isinstance(table, pa.Table)
    assert table.column("balance").to_pylist() == [70, 30]
    face.run(db.run("transfer", amount=10, src="bob", dst="alice"))
    assert balances(face, db) == [80, 20]
    with pytest.raises(errors.FailedPrecondition, match="statement 2"):
        face.run(db.run("transfer", "bob", "alice", 500))
    assert balances(face, db) == [80, 20], "a failed run changes nothing"
    with pytest.raises(errors.InvalidArgument, match="not both"):
        face.run(db.run("transfer", "bob", dst="alice", amount=1))
    with pytest.raises(errors.NotFound):
        face.run(db.run("missing"))
    names = [p["name"] for p in face.run(db.procedures())]
    assert names == ["transfer"]


def test_a_handle_with_an_idempotency_key_writes_and_bad_keys_are_refused(face, conn, home):
    db = bank(face, conn, home)
    keyed = conn.with_idempotency_key("deposit-1")
    assert type(keyed) is type(conn), "the same face"
    face.run(keyed.sql(db.path).execute(
        "UPDATE accounts SET balance = balance + 5 WHERE name = 'bob'"))
    assert balances(face, db) == [100, 5]
    # An embedded node keeps no keys (a cluster does, docs/cluster.md): the
    # handle's writes still run, and its key is checked before anything goes.
    for bad in ["", "has space", "x" * 129, "a/b"]:
        with pytest.raises(errors.InvalidArgument, match="idempotency key"):
            conn.with_idempotency_key(bad)
    assert balances(face, db) == [100, 5]


def test_sessions_isolate_commit_and_roll_back_on_exit(face, conn, home, busbar_node):
    db = bank(face, conn, home)
    series = f"{home}/meter"
    face.run(conn.timeseries.create(series, resolution="breakpoint"))
    other = face.connect(busbar_node)
    points = pa.table({"utc_time": pa.array([T0], pa.timestamp("ms", tz="UTC")),
                       "flags": pa.array([0], pa.uint32()), "value": [1.5]})

    def work(session):
        face.run(session.sql(db.path).execute("UPDATE accounts SET balance = 1"))
        face.run(session.timeseries.write(series, points))
        assert balances(face, session.sql(db.path)) == [1, 1]
        assert face.run(session.timeseries.read(series)).num_rows == 1
        assert balances(face, other.sql(db.path)) == [100, 0], "invisible outside"
        assert face.run(other.timeseries.read(series)).num_rows == 0

    # Leaving the context manager without commit rolls everything back.
    session = face.run(conn.session())
    work(session)
    if face.is_async:
        face.run(session.__aexit__(None, None, None))
    else:
        session.__exit__(None, None, None)
    assert session.ended
    assert balances(face, db) == [100, 0]
    assert face.run(other.timeseries.read(series)).num_rows == 0

    session = face.run(conn.session())
    work(session)
    ended = face.run(session.commit())
    assert ended == {"databases": 1, "series": 1}
    assert balances(face, db) == [1, 1]
    assert face.run(other.timeseries.read(series)).column("value").to_pylist() == [1.5]
    with pytest.raises(errors.FailedPrecondition, match="already ended"):
        face.run(session.rollback())
    other.close()


def test_time_series_round_trip_with_pyarrow_pandas_and_times(face, conn, home):
    path = f"{home}/wind"
    face.run(conn.timeseries.create(path, resolution="hour", unit="MW",
                                    time_zone="Europe/Oslo"))
    # pyarrow: naive microsecond timestamps are UTC; flags may be left out.
    naive = [dt.datetime(2026, 3, 29, h) for h in range(4)]
    table = pa.table({"utc_time": pa.array(naive, pa.timestamp("us")),
                      "value": [1.0, 2.0, 3.0, 4.0]})
    written = face.run(conn.timeseries.write(path, table))
    assert written["points_written"] == 4
    back = face.run(conn.timeseries.read(path))
    assert back.schema.field("utc_time").type == pa.timestamp("ms", tz="UTC")
    assert back.column("utc_time").to_pylist() == [t.replace(tzinfo=UTC) for t in naive]
    assert back.column("flags").to_pylist() == [0, 0, 0, 0]

    # pandas, tz-aware in Oslo (UTC+2 after the change): replaces [01:00Z, 03:00Z).
    oslo = pd.to_datetime(["2026-03-29T03:00:00", "2026-03-29T04:00:00"]).tz_localize("Europe/Oslo")
    frame = pd.DataFrame({"utc_time": oslo, "flags": pd.array([2, 2], dtype="uint32"),
                          "value": [20.0, 30.0]})
    start = dt.datetime(2026, 3, 29, 3, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    written = face.run(conn.timeseries.write(path, frame, start, "2026-03-29T03:00:00Z"))
    assert (written["points_written"], written["points_deleted"]) == (2, 2)
    values = face.run(conn.timeseries.read(path)).column("value").to_pylist()
    assert values == [1.0, 20.0, 30.0, 4.0]

    # Half-open reads with naive, aware, ISO and epoch-ms ends; many series at once.
    window = face.run(conn.timeseries.read(path, dt.datetime(2026, 3, 29, 1), T0 + 3 * HOUR))
    assert window.column("value").to_pylist() == [20.0, 30.0]
    epoch = int((T0 + HOUR).timestamp() * 1000)
    assert face.run(conn.timeseries.read(path, epoch, "2026-03-29T02:00:00")).num_rows == 1
    both = face.run(conn.timeseries.read([path, path], end=T0 + HOUR))
    assert [t.num_rows for t in both] == [1, 1]
    info = face.run(conn.timeseries.describe(path))
    assert int(info["points"]) == 4  # uint64: a string in proto JSON

    # Rejections name the row and change nothing.
    unsorted = pa.table({"utc_time": pa.array([T0 + HOUR, T0], pa.timestamp("ms", tz="UTC")),
                         "value": [0.0, 0.0]})
    with pytest.raises(errors.InvalidArgument, match="row 2"):
        face.run(conn.timeseries.write(path, unsorted))
    with pytest.raises(errors.InvalidArgument, match="bad start"):
        face.run(conn.timeseries.read(path, "yesterday"))
    with pytest.raises(errors.InvalidArgument, match="DataFrame"):
        face.run(conn.timeseries.write(path, [1, 2, 3]))
    with pytest.raises(errors.InvalidArgument, match="resolution"):
        face.run(conn.timeseries.create(f"{home}/x", resolution="fortnight"))
    assert face.run(conn.timeseries.read(path)).column("value").to_pylist() == values


def test_session_context_managers(busbar_node, home_path):
    """`with conn.session()` and `async with conn.session()` as users write them."""
    import asyncio

    import busbar
    import busbar.aio

    config = busbar_node.data_dir / "admin.json"
    with busbar.Connection.from_config(config) as conn:
        conn.create(home_path, "database")
        conn.sql(home_path).execute("CREATE TABLE t (x INTEGER)")
        with conn.session() as session:
            session.sql(home_path).execute("INSERT INTO t VALUES (1)")
            session.commit()
        with conn.session() as session:
            session.sql(home_path).execute("INSERT INTO t VALUES (2)")
        assert conn.sql(home_path).execute("SELECT x FROM t").column("x").to_pylist() == [1]

    async def main():
        async with await busbar.aio.Connection.from_config(config) as conn:
            async with conn.session() as session:
                await session.sql(home_path).execute("INSERT INTO t VALUES (3)")
                await session.commit()
            async with conn.session() as session:
                await session.sql(home_path).execute("INSERT INTO t VALUES (4)")
            table = await conn.sql(home_path).execute("SELECT x FROM t ORDER BY x")
            return table.column("x").to_pylist()

    assert asyncio.run(main()) == [1, 3]


@pytest.fixture
def home_path():
    return f"/home/admin/cm-{uuid.uuid4().hex[:10]}"


def test_limits_and_locks_raise_their_error_classes(face, tmp_path):
    """ResourceExhausted past --max-data-sessions; Conflict for a writer that
    waits longer than SQLite's busy timeout on a database a session holds."""
    from conftest import run_node

    with run_node(tmp_path / "limited", args=("--max-data-sessions", "1")) as node:
        conn = face.connect(node)
        face.run(conn.create("/home/admin/locked", "database"))
        db = conn.sql("/home/admin/locked")
        face.run(db.execute("CREATE TABLE t (x INTEGER)"))
        session = face.run(conn.session())
        face.run(session.sql(db.path).execute("INSERT INTO t VALUES (1)"))
        with pytest.raises(errors.ResourceExhausted, match="max_data_sessions"):
            face.run(conn.session())
        with pytest.raises(errors.Conflict, match="open session"):
            face.run(db.execute("INSERT INTO t VALUES (2)"))
        face.run(session.rollback())
        face.run(db.execute("INSERT INTO t VALUES (3)"))
        assert face.run(db.execute("SELECT x FROM t")).column("x").to_pylist() == [3]
        conn.close()


def test_a_subscriber_that_falls_behind_gets_slow_consumer(face, tmp_path):
    """A wire subscriber that stops reading is cut, and its iteration raises
    SlowConsumer after the chunks it already had."""
    from conftest import run_node

    with run_node(tmp_path / "slow", args=("--wire-queue", "1", "--wire-stall", "0.05")) as node:
        conn = face.connect(node)
        face.run(conn.create("/home/admin/pipe", "wire"))
        subscription = face.run(conn.wire("/home/admin/pipe").subscribe())
        publisher = face.connect(node)
        chunk = b"x" * (256 * 1024)
        face.run(publisher.wire("/home/admin/pipe").publish([chunk] * 200))
        with pytest.raises(errors.SlowConsumer):
            face.collect(subscription)
        publisher.close()
        conn.close()


_WITHOUT_PANDAS_SCRIPT = r"""
import asyncio, sys
import pyarrow as pa
import busbar, busbar.aio

config, home, points = sys.argv[1:]
conn = busbar.Connection.from_config(config)
conn.timeseries.create(home + "/s", resolution="hour")
# An Arrow stream that is not a Table, without flags (they default to OK);
# made by the parent: pyarrow's own constructors from Python lists import pandas.
stream = pa.ipc.open_stream(pa.memory_map(points))
assert conn.timeseries.write(home + "/s", stream)["points_written"] == 2
assert conn.timeseries.read(home + "/s").column("flags").to_pylist() == [0, 0]
conn.create(home + "/db", "database")
db = conn.sql(home + "/db")
assert db.execute("CREATE TABLE t (x INTEGER)").num_columns == 0
assert db.execute("SELECT 1 AS one").column("one").to_pylist() == [1]

async def awaited():
    aconn = await busbar.aio.Connection.from_config(config)
    assert (await aconn.timeseries.read(home + "/s")).num_rows == 2
    aconn.close()

asyncio.run(awaited())
print("pandas" in sys.modules)
"""


def test_reads_writes_and_queries_do_not_import_pandas(busbar_node, home_path, tmp_path):
    """Busbar never loads pandas into a program that does not (pyarrow.table()
    would: it asks whether its argument is a DataFrame)."""
    points = tmp_path / "points.arrows"
    times = pa.array([0, 3_600_000], pa.timestamp("ms", tz="UTC"))
    batch = pa.RecordBatch.from_pydict({"utc_time": times, "value": [1.0, 2.0]})
    with pa.ipc.new_stream(points, batch.schema) as writer:
        writer.write_batch(batch)
    conn = busbar.Connection.from_config(busbar_node.data_dir / "admin.json")
    conn.mkdir(home_path)
    try:
        child = subprocess.run(
            [sys.executable, "-c", _WITHOUT_PANDAS_SCRIPT,
             str(busbar_node.data_dir / "admin.json"), home_path, str(points)],
            capture_output=True, text=True, env=clean_env(), timeout=120)
        assert child.returncode == 0, child.stderr
        assert child.stdout.split() == ["False"]
    finally:
        conn.rm(home_path, recursive=True)
        conn.close()
