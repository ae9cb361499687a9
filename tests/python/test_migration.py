"""The migration frictions users met porting the seed SDKs' everyday tasks
(the second report of issue 21), one test each, both faces."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from busbar import errors

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)

from test_sdk import aio_face, home  # noqa: F401,E402  (shared fixtures; face and conn are in conftest)


def test_a_pandas_round_trip_keeps_missing_points(face, conn, home):
    path = f"{home}/gappy"
    face.run(conn.timeseries.create(path, resolution="hour"))
    times = pa.array([T0 + i * HOUR for i in range(3)], pa.timestamp("ms", tz="UTC"))
    face.run(conn.timeseries.write(path, pa.table({"utc_time": times,
                                                   "value": [1.0, None, 3.0]})))
    first = face.run(conn.timeseries.read(path))
    # A null value is a missing point: NaN with the MISSING flag.
    assert first.column("flags").to_pylist() == [0, conn.timeseries.MISSING, 0]
    frame = first.to_pandas()
    assert frame["value"].isna().tolist() == [False, True, False]
    # Back as it came out (pandas turns NaN into a null on the way in).
    written = face.run(conn.timeseries.write(path, frame))
    assert written["points_written"] == 3
    again = face.run(conn.timeseries.read(path))
    assert again.column("flags").to_pylist() == first.column("flags").to_pylist()
    assert again.column("utc_time").equals(first.column("utc_time"))
    # A DatetimeIndex is utc_time.
    indexed = frame.set_index("utc_time")
    indexed["value"] = [10.0, 20.0, 30.0]
    face.run(conn.timeseries.write(path, indexed))
    assert face.run(conn.timeseries.read(path)).column("value").to_pylist() == [10.0, 20.0, 30.0]
    # Errors name the caller's columns, not the flags column the SDK adds.
    extra = pa.table({"utc_time": times, "value": [1.0, 2.0, 3.0], "note": ["a", "b", "c"]})
    with pytest.raises(errors.InvalidArgument, match="has columns utc_time, value, note;"):
        face.run(conn.timeseries.write(path, extra))
    with pytest.raises(errors.InvalidArgument, match="has columns value;"):
        face.run(conn.timeseries.write(path, pd.DataFrame({"value": [1.0]})))


def test_asyncio_constructors_are_async_context_managers(aio_face, busbar_node):
    import busbar.aio

    config = busbar_node.data_dir / "admin.json"

    async def main():
        # Both spellings: the constructor in `async with`, and awaited first.
        async with busbar.aio.Connection.from_config(config) as conn:
            assert (await conn.whoami())["name"] == "admin"
        assert conn.closed, "closed on exit"
        async with await busbar.aio.Connection.from_config(config) as again:
            assert not again.closed
        assert again.closed
        plain = await busbar.aio.Connection.from_config(config)
        assert not plain.closed
        plain.close()

    aio_face.run(main())


def test_every_shown_spelling_of_a_resolution_or_curve_creates_a_series(face, conn, home,
                                                                         busbar_node):
    from test_sdk import cli

    first = f"{home}/a"
    face.run(conn.timeseries.create(first, resolution="15min", curve="linear"))
    shown = face.run(conn.timeseries.describe(first))["spec"]
    assert (shown["resolution"], shown["curve"]) == ("MIN15", "PIECEWISE_LINEAR")
    # What describe() shows, in any case, and the CLI's spellings.
    for i, (resolution, curve) in enumerate([(shown["resolution"], shown["curve"]),
                                             ("min15", "piecewise_linear"),
                                             ("15MIN", "Linear")]):
        face.run(conn.timeseries.create(f"{home}/b{i}", resolution=resolution, curve=curve))
        again = face.run(conn.timeseries.describe(f"{home}/b{i}"))["spec"]
        assert (again["resolution"], again["curve"]) == ("MIN15", "PIECEWISE_LINEAR")
    with pytest.raises(errors.InvalidArgument, match="use breakpoint, 1min"):
        face.run(conn.timeseries.create(f"{home}/c", resolution="fortnight"))
    # busbar ts ls prints the documented spelling, which the CLI takes back.
    listing = cli(busbar_node, "ts", "ls", home)
    assert "15min" in listing and "linear" in listing, listing
    cli(busbar_node, "ts", "create", f"{home}/d", "--resolution", "15min", "--curve", "linear")
    cli(busbar_node, "ts", "create", f"{home}/e", "--resolution", "MIN15",
        "--curve", "PIECEWISE_LINEAR")


def test_creating_can_be_idempotent(face, conn, home, busbar_node):
    import busbar
    from test_sdk import cli

    folder = f"{home}/f"
    face.run(conn.mkdir(folder))
    with pytest.raises(errors.AlreadyExists):
        face.run(conn.mkdir(folder))
    assert face.run(conn.mkdir(folder, exist_ok=True))["path"] == folder
    # Something else at the path is still an error.
    with pytest.raises(errors.AlreadyExists, match="as a folder, not a database"):
        face.run(conn.create(folder, "database", exist_ok=True))
    series = f"{home}/s"
    for _ in range(2):
        face.run(conn.timeseries.create(series, resolution="hour", exist_ok=True))
    with pytest.raises(errors.AlreadyExists, match="another definition"):
        face.run(conn.timeseries.create(series, resolution="day", exist_ok=True))
    # busbar mkdir -p: parents made, an existing folder is fine.
    cli(busbar_node, "mkdir", "-p", folder)
    cli(busbar_node, "mkdir", "-p", f"{home}/x/y")
    assert face.run(conn.get(f"{home}/x/y"))["kind"] == "FOLDER"
    # Rooms and wires made by the code that uses them, existing or not.
    for _ in range(2):
        room = busbar.Room(f"{home}/r")
        assert face.run(room.join(conn, create=True)) is room
        face.run(room.leave())
        subscription = face.run(conn.wire(f"{home}/w").subscribe(create=True, timeout=5))
        subscription.close()
    with pytest.raises(errors.AlreadyExists, match="as a folder"):
        face.run(busbar.Room(folder).join(conn, create=True))


def test_numpy_scalars_and_dates_are_sql_parameters(face, conn, home):
    import numpy as np

    db = face.database(conn, f"{home}/db", "CREATE TABLE t (b, i, f, s, d, ts, absent)")
    face.run(db.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [np.bool_(True), np.int64(7), np.float32(1.5), np.str_("x"),
                         dt.date(2026, 3, 29), np.datetime64("2026-03-29T01:00"),
                         np.datetime64("NaT")]))
    row = face.run(db.execute("SELECT * FROM t")).to_pylist()[0]
    midnight = int(T0.timestamp() * 1000)
    assert row == {"b": 1, "i": 7, "f": 1.5, "s": "x", "d": midnight,
                   "ts": midnight + 3_600_000, "absent": None}
    with pytest.raises(errors.InvalidArgument, match="numpy scalar"):
        face.run(db.execute("SELECT ?", [object()]))


def test_executemany_is_one_round_trip_and_one_transaction(face, conn, home):
    path = f"{home}/many"
    db = face.database(conn, path, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    summary = face.run(db.executemany("INSERT INTO t VALUES (?, ?)",
                                      [(i, f"v{i}") for i in range(2000)]))
    assert int(summary["rows_affected"]) == 2000

    def count():
        return face.run(db.execute("SELECT count(*) AS n FROM t")).column("n")[0].as_py()

    assert count() == 2000
    face.run(db.executemany("UPDATE t SET v = :v WHERE k = :k",
                            [{"k": 1, "v": "one"}, {"k": 2, "v": "two"}]))
    assert face.run(db.execute("SELECT v FROM t WHERE k < 3 ORDER BY k")).column("v") \
        .to_pylist() == ["v0", "one", "two"]
    # All or nothing: the third row breaks the key, so the first two are not kept.
    with pytest.raises(errors.BusbarError, match="UNIQUE"):
        face.run(db.executemany("INSERT INTO t VALUES (?, ?)",
                                [(5000, "a"), (5001, "b"), (1, "again")]))
    assert count() == 2000
    # A row that is no parameters is named before anything is sent.
    with pytest.raises(errors.InvalidArgument, match="row 2"):
        face.run(db.executemany("INSERT INTO t VALUES (?, ?)", [(7000, "a"), 7]))
    # In a session: a failed executemany leaves the session's other work.
    session = face.run(conn.session())
    face.run(session.sql(path).execute("INSERT INTO t VALUES (9000, 'kept')"))
    with pytest.raises(errors.BusbarError, match="UNIQUE"):
        face.run(session.sql(path).executemany("INSERT INTO t VALUES (?, ?)",
                                               [(9001, "a"), (9000, "again")]))
    face.run(session.commit())
    assert count() == 2001


def test_after_a_node_restart_streams_and_sessions_say_what_was_lost(face, restartable_node):
    import time

    conn = face.connect(restartable_node.node)
    path = "/home/admin/restart-db"
    face.run(conn.create(path, "database", exist_ok=True))
    face.run(conn.sql(path).execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)"))
    session = face.run(conn.session())
    face.run(session.sql(path).execute("INSERT INTO t VALUES (1)"))
    subscription = face.run(conn.wire("/home/admin/restart-wire").subscribe(create=True,
                                                                           timeout=5))
    restartable_node.kill()
    # A stream cut by the node's death is Unavailable and says so.
    with pytest.raises(errors.Unavailable, match="connection to the node was lost"):
        face.next(face.iterate(subscription))
    restartable_node.start()
    deadline = time.monotonic() + 20
    while True:  # until the connection is back
        try:
            face.run(conn.whoami())
            break
        except errors.Unavailable:
            assert time.monotonic() < deadline, "the connection did not come back"
            face.sleep(0.2)
    # The session died with the node, and the error says that (not idleness).
    with pytest.raises(errors.NotFound, match="lost when the node restarted"):
        face.run(session.commit())
    rows = face.run(conn.sql(path).execute("SELECT count(*) AS n FROM t"))
    assert rows.column("n").to_pylist() == [0], "nothing uncommitted survived"
    conn.close()


def test_a_stream_with_only_error_or_end_handlers_starts_and_wait_raises(face, conn):
    # An 'error' handler alone starts the stream and gets its error.
    call = face.run(conn.stream("busbar.v1.Node/Events", {}, timeout=0.5))
    failures = []
    call.on("error", failures.append)
    face.wait_until(lambda: failures, what="the error handler")
    assert isinstance(failures[0], errors.Timeout)
    face.run(call.wait(5))  # handled: wait() does not raise it again
    # An 'end' handler alone starts it too; the error nobody handled is
    # raised from wait().
    ends = []
    call = face.run(conn.stream("busbar.v1.Node/Events", {}, timeout=0.5))
    call.on("end", lambda: ends.append(1))
    with pytest.raises(errors.Timeout):
        face.run(call.wait(5))
    assert ends == []
    # wait() alone reads the stream.
    call = face.run(conn.stream("busbar.v1.Node/Events", {}, timeout=0.5))
    with pytest.raises(errors.Timeout):
        face.run(call.wait(5))


def test_smaller_frictions(face, conn, home, busbar_node):
    import busbar
    from test_sdk import cli

    # with_tls takes the CA by position, as text, bytes or a path.
    admin = busbar_node.admin
    ca = admin["ca_pem"]
    password = admin["credential"]["password"]
    for given in (ca, ca.encode()):
        other = face.run(face.Connection.with_tls(
            busbar_node.address, given, server_name=admin.get("server_name"), user="admin",
            password=password))
        assert face.run(other.whoami())["name"] == "admin"
        other.close()
    # Room.leave() returns None.
    room = busbar.Room(f"{home}/room")
    face.run(room.join(conn, create=True))
    assert face.run(room.leave()) is None
    # A wire publish says how many chunks nobody heard; one bytes object is one chunk.
    wire = conn.wire(f"{home}/w")
    face.run(conn.create(wire.path, "wire"))
    summary = face.run(wire.publish(b"alone"))
    assert (int(summary["chunks"]), int(summary["unheard_chunks"])) == (1, 1)
    with pytest.raises(errors.InvalidArgument, match="encode"):
        face.run(wire.publish("text"))
    # busbar sql counts in words that agree with the number.
    db = f"{home}/db"
    face.run(conn.create(db, "database"))
    face.run(conn.sql(db).execute("CREATE TABLE t (x)"))
    assert cli(busbar_node, "sql", db, "INSERT INTO t VALUES (1)").strip() == "1 row affected"
    assert cli(busbar_node, "sql", db, "INSERT INTO t VALUES (2), (3)").strip() \
        == "2 rows affected"
    # ts read and write explain their flags.
    help_text = cli(busbar_node, "ts", "read", "--help")
    assert "--start" in help_text and "RFC 3339" in help_text and ".parquet" in help_text


def test_resources_are_addressed_by_id_too(face, conn, home):
    path = f"{home}/ledger"
    made = face.run(conn.create(path, "database"))
    by_id = f"id:{made['id']}"
    assert face.run(conn.get(by_id))["path"] == path
    face.run(conn.sql(by_id).execute("CREATE TABLE t (x)"))
    # The id survives a move; the path does not.
    face.run(conn.mv(path, f"{home}/moved"))
    assert face.run(conn.get(by_id))["path"] == f"{home}/moved"
    face.run(conn.sql(by_id).execute("INSERT INTO t VALUES (1)"))
    with pytest.raises(errors.NotFound, match="no resource has id"):
        face.run(conn.get("id:00000000000000000000000000000000"))


def test_messages_before_a_late_data_handler_are_kept_for_it(face, conn):
    call = face.run(conn.stream("busbar.v1.Node/Events", {}, timeout=1.0))
    failures, got = [], []
    call.on("error", failures.append)  # starts reading
    face.sleep(0.3)  # READY arrives while no 'data' handler is attached
    call.on("data", got.append)
    face.wait_until(lambda: failures, what="the error handler")
    assert [m["kind"] for m in got] == ["READY"]
