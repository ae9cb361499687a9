#!/usr/bin/env python3
"""The Python scenario of the Busbar benchmark (run with the bench venv's python).

    python_peer.py --address https://127.0.0.1:PORT --ca CA.pem [--server-name N]
                   --descriptors busbar_descriptor.bin --series PATH
                   --calls N --points P --chunks C --turns T
                   (API token in env BUSBAR_BENCH_TOKEN)

Against one Busbar node, with two client libraries making the same RPCs:

* Busbar: ``busbar.Connection`` (``conn.status()``, ``conn.timeseries.read``)
  and ``busbar.aio.Connection`` (the same, awaited);
* stock grpcio (sync ``grpc`` and ``grpc.aio``), TLS with the node's CA, a
  session token from ``Auth/Login`` (with the same API token) as
  ``authorization: Bearer`` metadata, request and response classes built from
  Busbar's descriptor set with ``google.protobuf``'s message_factory (no
  generated code), the way a generic client would.

Each library runs in a process of its own (this script with ``--client``),
which imports only that library: a library's threads and state in the
process change the other's latency (measured: Busbar's p50 rose by 16-44 us
once grpcio had made calls in the same process). The processes take T turns,
one process per library and turn; this process (the driver) writes the
series, starts them and merges their figures.

1. Unary latency: ``busbar.v1.Node/Status``, N sequential calls per library
   and face (after a warm-up in every process), over the T turns; p50 and
   p99 over all calls. Busbar's faces run as they come (spinning off), then
   again with ``busbar.set_spin_limit(SPIN_ON_LIMIT)`` (the "spin on"
   figures: what opting in buys on this machine).
2. Read into pyarrow: P points of series PATH (written once, by the driver,
   before any timing), one untimed read and then one timed read per process;
   best time over the turns. grpcio reads ``busbar.v1.TimeSeries/Read``,
   whose responses carry the Arrow IPC stream in a protobuf ``bytes`` field:
   the pieces are joined and read with ``pyarrow.ipc.open_stream`` (the
   pattern of today's time-series SDKs); Busbar's ``conn.timeseries.read``
   returns the table. PATH is a regular MIN1 series without flags, so
   Busbar's client gets its times and flags as rules (the columns form) and
   only the values cross; the same is measured (sync faces only) on
   PATH-ragged, whose times are irregular and whose flags vary, so that all
   three columns cross for Busbar as for grpcio.
3. Stream into Python: each face subscribes to a fresh wire (Busbar's
   ``wire.subscribe()``, grpcio's ``busbar.v1.Wires/Subscribe``) while a
   publisher in another process (Busbar's sync face, which also creates and
   removes the wires) sends 64 B chunks into it as fast as it can; the rate
   is C chunks over the time from the first chunk received to the C-th after
   it, best over the turns.

Prints one JSON object: {"versions", "unary": {client: {p50_us, p99_us,
calls}}, "read": {client: {best_s, points, cpu_s, server_cpu_s}}, "stream":
{client: {best_s, chunks}}, "skipped": {client: reason}}. A library that is
missing is skipped (with the reason), the other still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import subprocess
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
#: The spin limit of the "spin on" rows: Linux haltpoll's default, the limit
#: docs/python.md suggests to whoever opts in.
SPIN_ON_LIMIT = 0.0002
CLIENTS = ("busbar", "grpcio")


def publisher(target: dict, orders, ready, go, stop, done) -> None:
    """Runs in its own process: puts None on ``ready`` once connected; then,
    for each wire path taken from ``orders``, creates the wire and puts the
    path on ``ready``; once ``go`` is set,
    publishes 64 B chunks until ``stop`` is set (at most two minutes), then
    removes the wire and puts the number of chunks on ``done``. ``None`` ends
    it."""
    import busbar

    with busbar.Connection.with_tls(**target) as conn:
        ready.put(None)  # started and connected: from now on it only waits
        while True:
            path = orders.get()
            if path is None:
                return
            conn.create(path, "wire")
            ready.put(path)
            go.wait(timeout=150)
            sent = 0
            deadline = time.monotonic() + 120

            def chunks():
                nonlocal sent
                while not stop.is_set() and time.monotonic() < deadline:
                    for _ in range(256):
                        yield CHUNK
                    sent += 256

            if not stop.is_set():
                conn.wire(path).publish(chunks())
            conn.rm(path)
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


def parse_args():
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
    parser.add_argument("--client", choices=CLIENTS,
                        help="(internal) measure one library for one turn, print its raw figures")
    return parser.parse_args()


def connection_target(args, ca_pem: str, token: str) -> dict:
    return dict(address=args.address, ca=ca_pem, server_name=args.server_name, token=token,
                timeout=600)


class Turn:
    """One library's turn, in its own process: raw latencies, read and stream
    times per face (``busbar``/``busbar.aio`` or ``grpcio``/``grpcio.aio``)."""

    def __init__(self, args, target: dict):
        self.args = args
        self.out: dict[str, dict] = {
            "versions": {}, "latencies_ns": {}, "read": {}, "stream": {}, "skipped": {}}
        self.warmup = max(50, args.calls // 10)
        self.calls = max(1, args.calls // args.turns)
        self.folder = args.series.rsplit("/", 1)[0]
        spawn = multiprocessing.get_context("spawn")
        self.orders, self.ready, self.done = spawn.Queue(), spawn.Queue(), spawn.Queue()
        self.go, self.stop = spawn.Event(), spawn.Event()
        self.feeder = spawn.Process(
            target=publisher,
            args=(target, self.orders, self.ready, self.go, self.stop, self.done), daemon=True)
        self.feeder.start()
        # Nothing is timed until the feeder has started and connected: a
        # process starting up beside the timed calls keeps this VM's idle
        # vCPU awake, which took a call's latency from 126 to 52 us.
        if self.ready.get(timeout=60) is not None:
            raise SystemExit("the publisher process did not start")

    def close(self) -> None:
        self.orders.put(None)
        self.feeder.join(timeout=30)

    def timed_calls(self, call) -> list:
        for _ in range(self.warmup):
            call()
        out = []
        for _ in range(self.calls):
            t = time.perf_counter_ns()
            call()
            out.append(time.perf_counter_ns() - t)
        return out

    async def timed_calls_async(self, call) -> list:
        for _ in range(self.warmup):
            await call()
        out = []
        for _ in range(self.calls):
            t = time.perf_counter_ns()
            await call()
            out.append(time.perf_counter_ns() - t)
        return out

    def clocks(self) -> tuple:
        return time.perf_counter(), time.process_time(), server_cpu_s(self.args.server_pid)

    def record_read(self, name: str, table: pa.Table, started: tuple) -> None:
        seconds, cpu_s, server_s = (now - then for now, then in zip(self.clocks(), started))
        if table.num_rows != self.args.points:
            raise SystemExit(f"{name} read {table.num_rows} of {self.args.points} points")
        self.out["read"][name] = {"best_s": seconds, "points": table.num_rows,
                                  "cpu_s": cpu_s, "server_cpu_s": server_s}

    def read(self, name: str, read) -> None:
        # Untimed: a fresh process's first read pays for fresh memory, and
        # pyarrow imports pandas on the first table it builds.
        read()
        started = self.clocks()
        self.record_read(name, read(), started)

    async def read_async(self, name: str, read) -> None:
        await read()
        started = self.clocks()
        self.record_read(name, await read(), started)

    @contextlib.contextmanager
    def fed_wire(self, name: str):
        """A fresh wire for ``name`` and ``feed()``, which has the publisher
        send into it until the block ends."""
        path = f"{self.folder}/wire-{name.replace('.', '-')}"
        self.go.clear()
        self.stop.clear()
        self.orders.put(path)
        try:
            if self.ready.get(timeout=60) != path:
                raise SystemExit("the wire publisher answered for another wire")
        except queue.Empty:
            raise SystemExit("the wire publisher did not create the wire")
        try:
            yield path, self.go.set
        finally:
            self.stop.set()
            self.go.set()
            try:
                self.done.get(timeout=150)
            except queue.Empty:
                raise SystemExit("the wire publisher did not stop")

    def stream(self, name: str, subscribe, cancel) -> None:
        with self.fed_wire(name) as (path, feed):
            chunks = subscribe(path)
            feed()
            try:
                seconds = time_chunks(chunks, self.args.chunks)
            finally:
                cancel(chunks)
        self.out["stream"][name] = {"best_s": seconds, "chunks": self.args.chunks}

    async def stream_async(self, name: str, subscribe, cancel) -> None:
        with self.fed_wire(name) as (path, feed):
            chunks = await subscribe(path)
            feed()
            try:
                seconds = await time_chunks_async(chunks, self.args.chunks)
            finally:
                cancel(chunks)
        self.out["stream"][name] = {"best_s": seconds, "chunks": self.args.chunks}


def busbar_turn(turn: Turn, target: dict) -> None:
    import busbar
    import busbar.aio

    series = turn.args.series
    # The default rows measure the default (off), whatever BUSBAR_SPIN_LIMIT says.
    busbar.set_spin_limit(0)

    @contextlib.contextmanager
    def spin_on():
        # For the same calls with spinning on (opted in): rows without a
        # target, beside the default's (spinning off).
        limit = busbar.spin_limit()
        busbar.set_spin_limit(SPIN_ON_LIMIT)
        try:
            yield
        finally:
            busbar.set_spin_limit(limit)

    with busbar.Connection.with_tls(**target) as conn:
        turn.out["latencies_ns"]["busbar"] = turn.timed_calls(conn.status)
        with spin_on():
            turn.out["latencies_ns"]["busbar spin on"] = turn.timed_calls(conn.status)
        turn.read("busbar", lambda: conn.timeseries.read(series))
        turn.read("busbar ragged", lambda: conn.timeseries.read(ragged(series)))
        turn.stream("busbar", lambda path: conn.wire(path).subscribe(), lambda s: s.close())

    async def asyncio_face() -> None:
        aconn = await busbar.aio.Connection.with_tls(**target)
        try:
            turn.out["latencies_ns"]["busbar.aio"] = await turn.timed_calls_async(aconn.status)
            with spin_on():
                turn.out["latencies_ns"]["busbar.aio spin on"] = (
                    await turn.timed_calls_async(aconn.status))
            await turn.read_async("busbar.aio", lambda: aconn.timeseries.read(series))

            async def subscribe(path: str):
                return await aconn.wire(path).subscribe()

            await turn.stream_async("busbar.aio", subscribe, lambda s: s.close())
        finally:
            aconn.close()

    asyncio.run(asyncio_face())


def grpcio_turn(turn: Turn, token: str) -> None:
    grpcio = Grpcio(turn.args, token)
    import google.protobuf

    turn.out["versions"].update(grpcio=grpcio.grpc.__version__,
                                protobuf=google.protobuf.__version__)
    turn.out["latencies_ns"]["grpcio"] = turn.timed_calls(grpcio.call_status)
    turn.read("grpcio", lambda: grpcio.read(turn.args.series))
    turn.read("grpcio ragged", lambda: grpcio.read(ragged(turn.args.series)))
    turn.stream("grpcio", grpcio.subscribe_wire, lambda s: s.cancel())

    async def asyncio_face() -> None:
        channel, status, subscribe_wire = grpcio.aio_channel()
        try:
            def call():
                return status(grpcio.status_request(), metadata=grpcio.metadata, timeout=30)

            turn.out["latencies_ns"]["grpcio.aio"] = await turn.timed_calls_async(call)

            async def subscribe(path: str):
                return subscribe_wire(path)

            await turn.stream_async("grpcio.aio", subscribe, lambda s: s.cancel())
        finally:
            await channel.close()

    asyncio.run(asyncio_face())


def ragged(series: str) -> str:
    """The path of the series that follows no rule, next to ``series``."""
    return f"{series}-ragged"


def ragged_points(n: int) -> pa.Table:
    """``points(n)`` with each time moved by up to 59.9 s within its minute
    and every third point flagged SUSPECT: neither times nor flags follow a
    rule, so every column crosses in full."""
    import numpy as np

    table = points(n)
    minutes = table.column(0).cast(pa.int64()).to_numpy()
    jitter = (np.arange(n, dtype=np.int64) * 7919) % 59_900
    flags = np.where(np.arange(n) % 3 == 0, 2, 0).astype(np.uint32)
    return pa.table(
        [pa.array(minutes + jitter, pa.timestamp("ms", tz="UTC")),
         pa.array(flags),
         table.column(2)],
        schema=table.schema,
    )


def run_turn(args, ca_pem: str, token: str) -> dict:
    """``--client``: one library's turn; prints its raw figures as JSON."""
    target = connection_target(args, ca_pem, token)
    turn = Turn(args, target)
    try:
        if args.client == "busbar":
            busbar_turn(turn, target)
        else:
            try:
                grpcio_turn(turn, token)
            except ImportError as error:
                turn.out["skipped"]["grpcio"] = f"grpcio/protobuf not importable: {error}"
    finally:
        turn.close()
    return turn.out


class Merged:
    """The turns' figures together: latencies over all calls, the best read
    and stream, CPU per read averaged over the turns."""

    def __init__(self, turns: int):
        self.turns = turns
        self.versions = {"python": sys.version.split()[0], "pyarrow": pa.__version__}
        self.latencies: dict[str, list] = {}
        self.reads: dict[str, dict] = {}
        self.streams: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}

    def add(self, turn: dict) -> None:
        self.versions.update(turn["versions"])
        self.skipped.update(turn["skipped"])
        for name, values in turn["latencies_ns"].items():
            self.latencies.setdefault(name, []).extend(values)
        for name, figures in turn["read"].items():
            best = self.reads.setdefault(name, {"best_s": float("inf"), "points": figures["points"],
                                                "cpu_s": 0.0, "server_cpu_s": 0.0})
            best["best_s"] = min(best["best_s"], figures["best_s"])
            best["cpu_s"] += figures["cpu_s"] / self.turns
            best["server_cpu_s"] += figures["server_cpu_s"] / self.turns
        for name, figures in turn["stream"].items():
            best = self.streams.setdefault(name, dict(figures))
            best["best_s"] = min(best["best_s"], figures["best_s"])

    def result(self) -> dict:
        return {
            "versions": self.versions,
            "unary": {name: summary(values) for name, values in self.latencies.items()},
            "read": self.reads,
            "stream": self.streams,
            "skipped": self.skipped,
        }


def one_turn(client: str) -> dict:
    """Runs this script with ``--client client`` and returns its figures."""
    command = [sys.executable, os.path.abspath(__file__), "--client", client, *sys.argv[1:]]
    done = subprocess.run(command, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the {client} turn failed (exit {done.returncode})")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def drive(args, ca_pem: str, token: str) -> dict:
    """Writes the series, runs one process per library and turn, merges."""
    merged = Merged(args.turns)
    try:
        import busbar
    except ImportError as error:
        # Without Busbar there is no series to read and no publisher.
        merged.skipped["busbar"] = f"the busbar package is not importable: {error}"
        return merged.result()
    merged.versions["busbar"] = getattr(busbar, "__version__", "?")
    with busbar.Connection.with_tls(**connection_target(args, ca_pem, token)) as conn:
        conn.timeseries.create(args.series, resolution="1min", unit="MW")
        conn.timeseries.write(args.series, points(args.points))
        conn.timeseries.create(ragged(args.series), resolution="breakpoint", unit="MW")
        conn.timeseries.write(ragged(args.series), ragged_points(args.points))
        try:
            for _ in range(args.turns):
                for client in CLIENTS:
                    if client not in merged.skipped:
                        merged.add(one_turn(client))
        finally:
            conn.rm(args.series)
            conn.rm(ragged(args.series))
    return merged.result()


def main() -> None:
    args = parse_args()
    token = os.environ["BUSBAR_BENCH_TOKEN"]
    with open(args.ca) as f:
        ca_pem = f.read()
    result = run_turn(args, ca_pem, token) if args.client else drive(args, ca_pem, token)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
