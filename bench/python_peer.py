#!/usr/bin/env python3
"""The Python scenario of the Busbar benchmark (run with the bench venv's python).

    python_peer.py --address https://127.0.0.1:PORT --ca CA.pem [--server-name N]
                   --descriptors busbar_descriptor.bin --series PATH
                   --calls N --points P --chunks C --turns T
                   (API token in env BUSBAR_BENCH_TOKEN)

Against one Busbar node, with three clients of the same RPCs:

* Busbar sync: ``busbar.Connection`` (``conn.status()``, ``conn.timeseries.read``);
* Busbar asyncio: ``busbar.aio.Connection`` (the same, awaited);
* stock grpcio (sync ``grpc`` and ``grpc.aio``), TLS with the node's CA, a
  session token from ``Auth/Login`` (with the same API token) as
  ``authorization: Bearer`` metadata, request and response classes built from
  Busbar's descriptor set with ``google.protobuf``'s message_factory (no
  generated code), the way a generic client would.

1. Unary latency: ``busbar.v1.Node/Status``, N sequential calls per client
   (after a warm-up), in T turns with the clients taking turns; p50 and p99.
2. Read into pyarrow: P points of series PATH (written once, from Python,
   before any timing) read T times per client, the clients taking turns; best
   time. grpcio reads ``busbar.v1.TimeSeries/Read``, whose responses carry the
   Arrow IPC stream in a protobuf ``bytes`` field: the pieces are joined and
   read with ``pyarrow.ipc.open_stream`` (the pattern of today's time-series
   SDKs); Busbar's ``conn.timeseries.read`` returns the table.
3. Stream into Python: each client subscribes to a fresh wire (Busbar's
   ``wire.subscribe()``, grpcio's ``busbar.v1.Wires/Subscribe``) while a
   publisher in another process (Busbar's sync face) sends 64 B chunks into
   it as fast as it can; the rate is C chunks over the time from the first
   chunk received to the C-th after it, best of T turns, the clients taking
   turns.

Prints one JSON object: {"versions", "unary": {client: {p50_us, p99_us,
calls}}, "read": {client: {best_s, points, cpu_s, server_cpu_s}}, "stream":
{client: {best_s, chunks}}, "skipped": {client: reason}}. A client whose
package is missing is skipped (with the reason), the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import sys
import time

import pyarrow as pa

from flight_peer import points  # the same points as the time-series scenario


def percentile(sorted_values: list, q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def server_cpu_s(pid) -> float:
    """CPU seconds (user + system) of process pid so far, from /proc (0 without it)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(latencies_ns: list) -> dict:
    values = sorted(latencies_ns)
    return {
        "p50_us": percentile(values, 0.50) / 1e3,
        "p99_us": percentile(values, 0.99) / 1e3,
        "calls": len(values),
    }


class Grpcio:
    """Status and Read over stock grpcio; classes from the descriptor set."""

    def __init__(self, args, token: str):
        import grpc
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        self.grpc = grpc
        with open(args.descriptors, "rb") as f:
            files = descriptor_pb2.FileDescriptorSet.FromString(f.read()).file
        # A descriptor set lists every file after its imports, as the pool needs.
        pool = descriptor_pool.DescriptorPool()
        for file in files:
            pool.Add(file)

        def cls(full_name: str):
            return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

        status = pool.FindServiceByName("busbar.v1.Node").methods_by_name["Status"]
        self.status_request = message_factory.GetMessageClass(status.input_type)
        self.node_status = message_factory.GetMessageClass(status.output_type)
        self.read_request = cls("busbar.v1.ReadSeriesRequest")
        read_response = cls("busbar.v1.ReadSeriesResponse")
        login_request, session = cls("busbar.v1.LoginRequest"), cls("busbar.v1.Session")

        with open(args.ca, "rb") as f:
            self.creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        self.target = args.address.split("://", 1)[-1]
        self.options = [("grpc.max_receive_message_length", -1)]
        if args.server_name:
            self.options.append(("grpc.ssl_target_name_override", args.server_name))
        self.channel = grpc.secure_channel(self.target, self.creds, options=self.options)
        login = self.channel.unary_unary(
            "/busbar.v1.Auth/Login",
            request_serializer=login_request.SerializeToString,
            response_deserializer=session.FromString,
        )
        self.metadata = [("authorization", f"Bearer {login(login_request(token=token), timeout=30).token}")]
        self.status = self.channel.unary_unary(
            "/busbar.v1.Node/Status",
            request_serializer=self.status_request.SerializeToString,
            response_deserializer=self.node_status.FromString,
        )
        self.read_stream = self.channel.unary_stream(
            "/busbar.v1.TimeSeries/Read",
            request_serializer=self.read_request.SerializeToString,
            response_deserializer=read_response.FromString,
        )
        self.subscribe_request = cls("busbar.v1.SubscribeRequest")
        self.wire_chunk = cls("busbar.v1.WireChunk")
        self.subscribe = self.channel.unary_stream(
            "/busbar.v1.Wires/Subscribe",
            request_serializer=self.subscribe_request.SerializeToString,
            response_deserializer=self.wire_chunk.FromString,
        )

    def call_status(self):
        return self.status(self.status_request(), metadata=self.metadata, timeout=30)

    def read(self, path: str) -> pa.Table:
        pieces = [r.arrow_ipc for r in self.read_stream(
            self.read_request(paths=[path]), metadata=self.metadata, timeout=600)
            if r.WhichOneof("part") == "arrow_ipc"]
        return pa.ipc.open_stream(pa.py_buffer(b"".join(pieces))).read_all()

    def subscribe_wire(self, path: str):
        return self.subscribe(self.subscribe_request(path=path), metadata=self.metadata,
                              timeout=300)

    def aio_channel(self):
        """A grpc.aio channel (inside a running loop), its Status callable and
        a function subscribing to a wire."""
        channel = self.grpc.aio.secure_channel(self.target, self.creds, options=self.options)
        status = channel.unary_unary(
            "/busbar.v1.Node/Status",
            request_serializer=self.status_request.SerializeToString,
            response_deserializer=self.node_status.FromString,
        )
        subscribe = channel.unary_stream(
            "/busbar.v1.Wires/Subscribe",
            request_serializer=self.subscribe_request.SerializeToString,
            response_deserializer=self.wire_chunk.FromString,
        )

        def subscribe_wire(path: str):
            return subscribe(self.subscribe_request(path=path), metadata=self.metadata,
                             timeout=300)

        return channel, status, subscribe_wire


CHUNK = b"x" * 64


def publisher(target: dict, orders, stop, done) -> None:
    """Runs in its own process: for each wire path taken from ``orders``,
    publishes 64 B chunks until ``stop`` is set (at most two minutes), then
    puts the number of chunks on ``done``. ``None`` ends it."""
    import busbar

    with busbar.Connection.with_tls(**target) as conn:
        while True:
            path = orders.get()
            if path is None:
                return
            sent = 0
            deadline = time.monotonic() + 120

            def chunks():
                nonlocal sent
                while not stop.is_set() and time.monotonic() < deadline:
                    for _ in range(256):
                        yield CHUNK
                    sent += 256

            conn.wire(path).publish(chunks())
            done.put(sent)


def chunk_bytes(item) -> int:
    """Length of a received chunk: bytes (Busbar) or a WireChunk (grpcio)."""
    return len(item) if isinstance(item, (bytes, bytearray, memoryview)) else len(item.data)


def time_chunks(chunks, count: int) -> float:
    """Seconds from the first chunk to ``count`` chunks' worth of bytes after it."""
    it = iter(chunks)
    next(it)
    started, wanted = time.perf_counter(), count * len(CHUNK)
    while wanted > 0:
        wanted -= chunk_bytes(next(it))
    return time.perf_counter() - started


async def time_chunks_async(chunks, count: int) -> float:
    it = chunks.__aiter__()
    await it.__anext__()
    started, wanted = time.perf_counter(), count * len(CHUNK)
    while wanted > 0:
        wanted -= chunk_bytes(await it.__anext__())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--server-name")
    parser.add_argument("--descriptors", required=True)
    parser.add_argument("--series", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--points", type=int, required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--server-pid", type=int, help="the node's pid, for its CPU time per read")
    args = parser.parse_args()
    token = os.environ["BUSBAR_BENCH_TOKEN"]
    with open(args.ca) as f:
        ca_pem = f.read()

    versions = {"python": sys.version.split()[0], "pyarrow": pa.__version__}
    skipped: dict[str, str] = {}
    latencies: dict[str, list] = {}
    reads: dict[str, dict] = {}
    streams: dict[str, dict] = {}

    try:
        import busbar
        import busbar.aio
    except ImportError as error:
        busbar = None
        skipped["busbar"] = f"the busbar package is not importable: {error}"
    try:
        grpcio = Grpcio(args, token)
        import google.protobuf
        versions["grpcio"] = grpcio.grpc.__version__
        versions["protobuf"] = google.protobuf.__version__
    except ImportError as error:
        grpcio = None
        skipped["grpcio"] = f"grpcio/protobuf not importable: {error}"

    def record(name: str, turn_ns: list) -> None:
        latencies.setdefault(name, []).extend(turn_ns)

    def timed_calls(call, n: int) -> list:
        out = []
        for _ in range(n):
            t = time.perf_counter_ns()
            call()
            out.append(time.perf_counter_ns() - t)
        return out

    def record_read(name: str, table: pa.Table, seconds: float, cpu_s: float, server_s: float) -> None:
        if table.num_rows != args.points:
            raise SystemExit(f"{name} read {table.num_rows} of {args.points} points")
        best = reads.setdefault(name, {"best_s": float("inf"), "points": table.num_rows,
                                       "cpu_s": 0.0, "server_cpu_s": 0.0})
        best["best_s"] = min(best["best_s"], seconds)
        best["cpu_s"] += cpu_s / args.turns
        best["server_cpu_s"] += server_s / args.turns

    def clocks() -> tuple:
        return time.perf_counter(), time.process_time(), server_cpu_s(args.server_pid)

    def since(started: tuple) -> tuple:
        return tuple(now - then for now, then in zip(clocks(), started))

    def timed_read(read):
        started = clocks()
        table = read()
        return (table, *since(started))

    conn = None
    if busbar is not None:
        conn = busbar.Connection.with_tls(args.address, ca=ca_pem, server_name=args.server_name,
                                          token=token, timeout=600)
        # The series, written once before any timing (points built first).
        table = points(args.points)
        conn.timeseries.create(args.series, resolution="1min", unit="MW")
        conn.timeseries.write(args.series, table)
        del table
        versions["busbar"] = getattr(busbar, "__version__", "?")

    warmup = max(50, args.calls // 10)
    per_turn = max(1, args.calls // args.turns)

    # Sync faces: Busbar and grpcio take turns.
    if conn is not None:
        timed_calls(conn.status, warmup)
    if grpcio is not None:
        timed_calls(grpcio.call_status, warmup)
    for _ in range(args.turns):
        if conn is not None:
            record("busbar", timed_calls(conn.status, per_turn))
        if grpcio is not None:
            record("grpcio", timed_calls(grpcio.call_status, per_turn))
    for _ in range(args.turns):
        if conn is not None:
            record_read("busbar", *timed_read(lambda: conn.timeseries.read(args.series)))
        if grpcio is not None:
            record_read("grpcio", *timed_read(lambda: grpcio.read(args.series)))

    # Streams: a publisher in its own process feeds a fresh wire per client
    # and turn (it needs Busbar: without it there are no stream figures).
    folder = args.series.rsplit("/", 1)[0]
    feeder = None
    if conn is not None:
        spawn = multiprocessing.get_context("spawn")
        orders, stop, done = spawn.Queue(), spawn.Event(), spawn.Queue()
        target = dict(address=args.address, ca=ca_pem, server_name=args.server_name,
                      token=token, timeout=600)
        feeder = spawn.Process(target=publisher, args=(target, orders, stop, done), daemon=True)
        feeder.start()

    @contextlib.contextmanager
    def fed_wire(name: str):
        """A fresh wire for ``name`` and ``feed()``, which has the publisher
        send into it until the block ends."""
        path = f"{folder}/wire-{name.replace('.', '-')}"
        conn.create(path, "wire")
        fed = False

        def feed() -> None:
            nonlocal fed
            stop.clear()
            orders.put(path)
            fed = True

        try:
            yield path, feed
        finally:
            if fed:
                stop.set()
                try:
                    done.get(timeout=150)
                except queue.Empty:
                    raise SystemExit("the wire publisher did not stop")
            conn.rm(path)

    def record_stream(name: str, seconds: float) -> None:
        best = streams.setdefault(name, {"best_s": float("inf"), "chunks": args.chunks})
        best["best_s"] = min(best["best_s"], seconds)

    def sync_stream(name: str, subscribe, cancel) -> None:
        with fed_wire(name) as (path, feed):
            chunks = subscribe(path)
            feed()
            try:
                record_stream(name, time_chunks(chunks, args.chunks))
            finally:
                cancel(chunks)

    if feeder is not None:
        for _ in range(args.turns):
            sync_stream("busbar", lambda path: conn.wire(path).subscribe(), lambda s: s.close())
            if grpcio is not None:
                sync_stream("grpcio", grpcio.subscribe_wire, lambda s: s.cancel())

    # Asyncio faces: busbar.aio and grpc.aio, in one event loop.
    async def asyncio_faces() -> None:
        aconn = None
        if busbar is not None:
            aconn = await busbar.aio.Connection.with_tls(
                args.address, ca=ca_pem, server_name=args.server_name, token=token, timeout=600)
        channel = astatus = asubscribe = None
        if grpcio is not None:
            channel, astatus, asubscribe = grpcio.aio_channel()

        async def calls(call, n: int) -> list:
            out = []
            for _ in range(n):
                t = time.perf_counter_ns()
                await call()
                out.append(time.perf_counter_ns() - t)
            return out

        def grpc_call():
            return astatus(grpcio.status_request(), metadata=grpcio.metadata, timeout=30)

        if aconn is not None:
            await calls(aconn.status, warmup)
        if astatus is not None:
            await calls(grpc_call, warmup)
        for _ in range(args.turns):
            if aconn is not None:
                record("busbar.aio", await calls(aconn.status, per_turn))
            if astatus is not None:
                record("grpcio.aio", await calls(grpc_call, per_turn))
        if aconn is not None:
            for _ in range(args.turns):
                started = clocks()
                table = await aconn.timeseries.read(args.series)
                record_read("busbar.aio", table, *since(started))

        async def async_stream(name: str, subscribe, cancel) -> None:
            with fed_wire(name) as (path, feed):
                chunks = await subscribe(path)
                feed()
                try:
                    record_stream(name, await time_chunks_async(chunks, args.chunks))
                finally:
                    cancel(chunks)

        async def busbar_subscribe(path: str):
            return await aconn.wire(path).subscribe()

        async def grpc_subscribe(path: str):
            return asubscribe(path)

        if feeder is not None:
            for _ in range(args.turns):
                await async_stream("busbar.aio", busbar_subscribe, lambda s: s.close())
                if asubscribe is not None:
                    await async_stream("grpcio.aio", grpc_subscribe, lambda s: s.cancel())
        if aconn is not None:
            aconn.close()
        if channel is not None:
            await channel.close()

    asyncio.run(asyncio_faces())
    if feeder is not None:
        orders.put(None)
        feeder.join(timeout=30)
    if conn is not None:
        conn.rm(args.series)
        conn.close()

    print(json.dumps({
        "versions": versions,
        "unary": {name: summary(values) for name, values in latencies.items()},
        "read": reads,
        "stream": streams,
        "skipped": skipped,
    }), flush=True)


if __name__ == "__main__":
    main()
