#!/usr/bin/env python3
"""Arrow Flight helpers of the Busbar benchmark (run with the bench venv's python).

    flight_peer.py serve --cert C --key K
        The pyarrow.flight peer: an in-memory Flight server with TLS on a free
        loopback port. DoPut keeps the table it receives (under the
        descriptor's path) in memory; GetFlightInfo/DoGet serve it back from
        memory. Prints "location grpc+tls://127.0.0.1:PORT", then serves until
        its stdin closes.

    flight_peer.py client --location L --ca CA --path P --points N [--token T | env BUSBAR_BENCH_TOKEN]
        One Flight client for every Flight row, so client cost is equal: builds
        N points of a minute series (utc_time timestamp[ms, UTC], flags uint32,
        value float64) in memory before timing, then times DoPut of all of them
        to descriptor path P (until the server's acknowledgement) and
        GetFlightInfo + DoGet of P back (until the last batch). Prints one JSON
        object: put_s, get_s (wall), put_cpu_s, get_cpu_s (this process's
        CPU), put_points, got_points.

    flight_peer.py sql --location L --ca CA --database D --query Q [--token T]
        Runs Q through the stock ADBC Flight SQL driver against a Busbar node
        (header x-busbar-database: D) and times execute + fetch_arrow_table.
        Prints one JSON object: seconds, rows, columns.

Every mode exits by itself: the server when its stdin closes (the benchmark
holds it open), the clients after one round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight

# Busbar stores and serves chunks of up to 32 768 points; the client sends
# batches of that size to every server.
BATCH = 32_768
# 2026-01-01T00:00:00Z, on the minute grid.
T0_MS = 1_767_225_600_000
MINUTE_MS = 60_000

SCHEMA = pa.schema([
    pa.field("utc_time", pa.timestamp("ms", tz="UTC"), nullable=False),
    pa.field("flags", pa.uint32(), nullable=False),
    pa.field("value", pa.float64(), nullable=False),
])


def points(n: int) -> pa.Table:
    """n points one minute apart, built in Arrow (no Python loop per point)."""
    import numpy as np

    times = T0_MS + np.arange(n, dtype=np.int64) * MINUTE_MS
    values = np.sin(np.arange(n, dtype=np.float64) / 1440.0) * 100.0
    table = pa.table(
        [pa.array(times, pa.timestamp("ms", tz="UTC")),
         pa.array(np.zeros(n, dtype=np.uint32)),
         pa.array(values)],
        schema=SCHEMA,
    )
    return table


class MemoryServer(flight.FlightServerBase):
    """Tables in a dict, keyed by descriptor path; nothing touches disk."""

    def __init__(self, location, tls_certificates):
        super().__init__(location, tls_certificates=tls_certificates)
        self.tables: dict[bytes, pa.Table] = {}
        self.lock = threading.Lock()

    @staticmethod
    def key(descriptor) -> bytes:
        if descriptor.descriptor_type == flight.DescriptorType.PATH:
            return b"/".join(p if isinstance(p, bytes) else p.encode() for p in descriptor.path)
        return descriptor.command

    def do_put(self, context, descriptor, reader, writer):
        table = reader.read_all()
        with self.lock:
            self.tables[self.key(descriptor)] = table
        writer.write(pa.py_buffer(json.dumps({"points_written": table.num_rows}).encode()))

    def get_flight_info(self, context, descriptor):
        key = self.key(descriptor)
        with self.lock:
            table = self.tables.get(key)
        if table is None:
            raise flight.FlightServerError(f"no table {key!r}")
        endpoint = flight.FlightEndpoint(key, [])
        return flight.FlightInfo(table.schema, descriptor, [endpoint], table.num_rows, table.nbytes)

    def do_get(self, context, ticket):
        with self.lock:
            table = self.tables.get(ticket.ticket)
        if table is None:
            raise flight.FlightServerError(f"no table {ticket.ticket!r}")
        return flight.RecordBatchStream(table)


def serve(args) -> None:
    with open(args.cert, "rb") as f:
        cert = f.read()
    with open(args.key, "rb") as f:
        key = f.read()
    server = MemoryServer("grpc+tls://127.0.0.1:0", [flight.CertKeyPair(cert, key)])
    print(f"location grpc+tls://127.0.0.1:{server.port}", flush=True)
    # Serve until the parent closes our stdin (or dies).
    sys.stdin.read()
    server.shutdown()


def options_for(token: str | None) -> flight.FlightCallOptions:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return flight.FlightCallOptions(headers=headers, timeout=600)


def connect(args) -> flight.FlightClient:
    with open(args.ca, "rb") as f:
        ca = f.read()
    kwargs = {"tls_root_certs": ca}
    if args.server_name:
        kwargs["override_hostname"] = args.server_name
    return flight.FlightClient(args.location, **kwargs)


def client(args) -> None:
    token = args.token or os.environ.get("BUSBAR_BENCH_TOKEN")
    options = options_for(token)
    table = points(args.points)
    batches = table.to_batches(max_chunksize=BATCH)
    descriptor = flight.FlightDescriptor.for_path(args.path)
    conn = connect(args)

    started, cpu = time.perf_counter(), time.process_time()
    writer, reader = conn.do_put(descriptor, SCHEMA, options)
    for batch in batches:
        writer.write_batch(batch)
    writer.done_writing()
    reader.read()  # the server's acknowledgement (Busbar: after fsync)
    writer.close()
    put_s, put_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    del batches, table

    def read() -> tuple[int, float, float]:
        started, cpu = time.perf_counter(), time.process_time()
        info = conn.get_flight_info(descriptor, options)
        got = 0
        for endpoint in info.endpoints:
            stream = conn.do_get(endpoint.ticket, options)
            for chunk in stream:
                got += chunk.data.num_rows
        return got, time.perf_counter() - started, time.process_time() - cpu

    # The first read of a fresh process touches memory for the first time,
    # which this kind of VM charges for many times over (bench/README.md):
    # it is reported apart, and the timed read is the second.
    _, first_get_s, _ = read()
    got, get_s, get_cpu_s = read()
    print(json.dumps({"put_s": put_s, "first_get_s": first_get_s, "get_s": get_s,
                      "put_cpu_s": put_cpu_s, "get_cpu_s": get_cpu_s,
                      "put_points": args.points, "got_points": got}))


def sql(args) -> None:
    import adbc_driver_flightsql.dbapi as flightsql
    from adbc_driver_flightsql import DatabaseOptions

    token = args.token or os.environ.get("BUSBAR_BENCH_TOKEN")
    with open(args.ca, encoding="utf-8") as f:
        ca = f.read()
    kwargs = {
        DatabaseOptions.TLS_ROOT_CERTS.value: ca,
        DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}",
        "adbc.flight.sql.rpc.call_header.x-busbar-database": args.database,
    }
    if args.server_name:
        kwargs[DatabaseOptions.TLS_OVERRIDE_HOSTNAME.value] = args.server_name
    with flightsql.connect(args.location, db_kwargs=kwargs, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")  # connect and authenticate before timing
            cur.fetchall()
            started = time.perf_counter()
            cur.execute(args.query)
            table = cur.fetch_arrow_table()
            seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": table.num_rows,
                      "columns": [str(t) for t in table.schema.types]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    p = modes.add_parser("serve")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    for name in ("client", "sql"):
        p = modes.add_parser(name)
        p.add_argument("--location", required=True)
        p.add_argument("--ca", required=True)
        p.add_argument("--server-name")
        p.add_argument("--token")
        if name == "client":
            p.add_argument("--path", required=True)
            p.add_argument("--points", type=int, required=True)
        else:
            p.add_argument("--database", required=True)
            p.add_argument("--query", required=True)
    args = parser.parse_args()
    {"serve": serve, "client": client, "sql": sql}[args.mode](args)


if __name__ == "__main__":
    main()
