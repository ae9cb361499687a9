"""Chaos: kill -9 the node at random moments while clients write, and check
after every restart that every acknowledged write is there and nothing
half-applied is visible.

Four kinds of writes, from several writer threads, each on its own
connection:

- an SQL insert of one row (acknowledged: the row is there);
- a stored procedure that inserts a key into two tables (acknowledged: in
  both; never in only one);
- a data session that inserts three rows and commits (acknowledged: all
  three; never one or two);
- a time-series write of one point (acknowledged: the point is there with
  its value).

A write whose call failed (the node died under it) may or may not have
applied; only acknowledged ones are required, and the all-or-nothing checks
hold for every key either way.

`make chaos` runs `python tests/python/chaos.py --cycles N` (CYCLES=20 by
default); the test suite runs a few cycles (test_chaos.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402

import busbar  # noqa: E402
from conftest import RestartableNode  # noqa: E402

DB = "/home/admin/chaos"
BASE = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
CALL_TIMEOUT_S = 10.0


def series(writer: int) -> str:
    return f"/home/admin/chaos-ts-{writer}"


@dataclass
class Acked:
    rows: set = field(default_factory=set)        # (writer, seq)
    pairs: set = field(default_factory=set)       # key
    sessions: set = field(default_factory=set)    # key
    points: set = field(default_factory=set)      # (writer, seq)

    def count(self) -> int:
        return len(self.rows) + len(self.pairs) + len(self.sessions) + len(self.points)


def setup(conn: busbar.Connection, writers: int) -> None:
    conn.create(DB, "database")
    db = conn.sql(DB)
    db.execute("CREATE TABLE rows (w INTEGER, seq INTEGER, PRIMARY KEY (w, seq))")
    db.execute("CREATE TABLE p1 (k TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE p2 (k TEXT PRIMARY KEY)")
    db.execute("CREATE TABLE s (k TEXT, i INTEGER)")
    db.create_procedure("pair", ["k"], "INSERT INTO p1 VALUES (:k); INSERT INTO p2 VALUES (:k)")
    for writer in range(writers):
        conn.timeseries.create(series(writer), resolution="hour")


def write_loop(admin: dict, writer: int, cycle: int, stop: threading.Event,
               acked: Acked, lock: threading.Lock) -> None:
    """Writes until `stop`; records what the node acknowledged."""
    try:
        conn = busbar.Connection.from_config(admin, timeout=CALL_TIMEOUT_S)
    except busbar.errors.BusbarError:
        return
    seq = cycle * 1_000_000
    try:
        while not stop.is_set():
            seq += 1
            kind = seq % 4
            key = f"{writer}-{seq}"
            try:
                if kind == 0:
                    conn.sql(DB).execute("INSERT INTO rows VALUES (?, ?)", [writer, seq])
                    done = ("rows", (writer, seq))
                elif kind == 1:
                    conn.sql(DB).run("pair", key)
                    done = ("pairs", key)
                elif kind == 2:
                    with conn.session() as session:
                        db = session.sql(DB)
                        for i in range(3):
                            db.execute("INSERT INTO s VALUES (?, ?)", [key, i])
                        session.commit()
                    done = ("sessions", key)
                else:
                    at = BASE + dt.timedelta(hours=seq % 100_000)
                    conn.timeseries.write(series(writer), pa.table({
                        "utc_time": pa.array([at], pa.timestamp("ms", tz="UTC")),
                        "value": [float(seq)],
                    }))
                    done = ("points", (writer, seq % 100_000, float(seq)))
            except Exception:  # the node died under the call: outcome unknown
                if stop.is_set():
                    return
                time.sleep(0.05)
                continue
            with lock:
                getattr(acked, done[0]).add(done[1])
    finally:
        try:
            conn.close()
        except Exception:
            pass


def verify(conn: busbar.Connection, acked: Acked, writers: int) -> int:
    """Checks every acknowledged write and the all-or-nothing rules; returns
    how many acknowledged writes were checked."""
    db = conn.sql(DB)
    rows = {(r["w"], r["seq"]) for r in db.execute("SELECT w, seq FROM rows").to_pylist()}
    missing = acked.rows - rows
    assert not missing, f"acknowledged rows lost: {sorted(missing)[:5]}"
    p1 = {r["k"] for r in db.execute("SELECT k FROM p1").to_pylist()}
    p2 = {r["k"] for r in db.execute("SELECT k FROM p2").to_pylist()}
    assert p1 == p2, f"a procedure applied half: {sorted(p1 ^ p2)[:5]}"
    assert not acked.pairs - p1, f"acknowledged procedure runs lost: {sorted(acked.pairs - p1)[:5]}"
    counts = {r["k"]: r["n"] for r in
              db.execute("SELECT k, count(*) AS n FROM s GROUP BY k").to_pylist()}
    partial = {k: n for k, n in counts.items() if n != 3}
    assert not partial, f"a session committed part of its work: {list(partial.items())[:5]}"
    assert not acked.sessions - set(counts), "acknowledged session commits lost"
    # A later acknowledged write of the same hour replaces an earlier one's
    # point, so each hour must hold the value of the newest write to it.
    newest: dict = {}
    for writer, hour, value in acked.points:
        newest[(writer, hour)] = max(value, newest.get((writer, hour), value))
    for writer in range(writers):
        table = conn.timeseries.read(series(writer))
        stored = {}
        for at, value in zip(table.column("utc_time").to_pylist(), table.column("value").to_pylist()):
            stored[int((at - BASE).total_seconds() // 3600)] = value
        for (w, hour), value in newest.items():
            if w == writer:
                assert stored.get(hour) is not None and stored[hour] >= value, (
                    f"acknowledged point lost: series {writer} hour {hour} value {value}, "
                    f"stored {stored.get(hour)}")
    return acked.count()


def run_chaos(workdir: Path, cycles: int, writers: int = 4, seed: int | None = None) -> tuple[int, int]:
    """Runs `cycles` kill -9 cycles; returns (cycles, acknowledged writes checked)."""
    rng = random.Random(seed)
    node = RestartableNode(workdir / "data", workdir / "logs")
    acked, lock = Acked(), threading.Lock()
    try:
        with busbar.Connection.from_config(node.node.admin) as conn:
            setup(conn, writers)
        checked = 0
        for cycle in range(1, cycles + 1):
            stop = threading.Event()
            threads = [threading.Thread(target=write_loop,
                                        args=(node.node.admin, w, cycle, stop, acked, lock))
                       for w in range(writers)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.5, 2.0))
            node.kill()
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
                assert not thread.is_alive(), "a writer hung after the node died"
            node.start()
            with busbar.Connection.from_config(node.node.admin, timeout=60) as conn:
                checked = verify(conn, acked, writers)
            print(f"chaos: cycle {cycle}/{cycles}: {checked} acknowledged writes checked",
                  flush=True)
        return cycles, checked
    finally:
        node.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="busbar-chaos-") as workdir:
        cycles, checked = run_chaos(Path(workdir), args.cycles, args.writers, args.seed)
    print(f"chaos: {cycles} kill -9 cycles, {checked} acknowledged writes checked, none lost, "
          "nothing half-applied")


if __name__ == "__main__":
    main()
