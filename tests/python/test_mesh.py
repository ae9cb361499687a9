"""Mesh from Python against a real node: interfaces declared as classes,
provided with `conn.provide`, called with `conn.remote` and by name, from
both faces, across processes, and by a stock grpcio client that knows the
service only through reflection.

No `from __future__ import annotations` here: interfaces are declared
inside test functions, and their hints must be objects, not strings to
resolve later.
"""

import abc
import asyncio
import base64
import dataclasses
import json
import signal
import subprocess
import sys
import threading
import time
import typing
import uuid
from typing import Dict, Iterator, List, Optional, TypedDict

import pytest

import busbar
import busbar.aio
from busbar import errors
from conftest import clean_env
from faces import END, Face

STARTUP_S = 60  # a provider process: Python start, import, connect, offer


def unique(prefix: str = "Svc") -> str:
    return f"mesh.pytest.{prefix}{uuid.uuid4().hex[:8]}"


def declare_tokenizer(name: str) -> type:
    """The issue's interface, under a name of the test's own (a live
    service keeps its signature, so tests do not share one)."""

    @busbar.interface(name)
    class Tokenizer(abc.ABC):
        @busbar.method("apply")
        @abc.abstractmethod
        def apply(self, kind: str, duration: int) -> str: ...

        @busbar.method("verify", idempotent=True)
        @abc.abstractmethod
        def verify(self, token: str) -> bool: ...

    return Tokenizer


def provide(face: Face, conn, implementation, **options):
    return face.run(conn.provide(implementation, **options))


def close(face: Face, provider, **options) -> None:
    face.run(provider.close(**options))


def live(face: Face, conn, name: str) -> list:
    return [s for s in face.run(conn.services()) if s["name"] == name]


# --- the example -------------------------------------------------------------------


def test_the_example_provides_calls_remotely_and_by_name_then_drains(face, conn):
    name = unique("Tokenizer")
    Tokenizer = declare_tokenizer(name)

    class MeshTokenizer(Tokenizer):
        def apply(self, kind, duration):
            return f"foo {kind} {duration}"

        def verify(self, token):
            return token.startswith("foo")

    assert live(face, conn, name) == []  # declaring registered nothing
    provider = provide(face, conn, MeshTokenizer())
    assert provider.paths == [f"/services/{name}"]
    assert provider.services == [name]
    tokenizer = conn.remote(Tokenizer)  # made at once, in both faces
    assert isinstance(tokenizer, Tokenizer)
    token = face.run(tokenizer.apply("PERMIT", 300_000))
    assert token == "foo PERMIT 300000"
    assert face.run(tokenizer.verify(token)) is True
    assert face.run(tokenizer.verify(token="bar")) is False
    by_name = face.run(conn.call(f"{name}/apply", {"kind": "PERMIT", "duration": 1}))
    assert by_name == {"value": "foo PERMIT 1"}
    (service,) = live(face, conn, name)
    assert service["methods"] == ["apply", "verify"]
    assert service["providers"][0]["id"] == provider.id
    assert service["providers"][0]["calls_served"] == 4

    started = time.monotonic()
    close(face, provider)
    assert time.monotonic() - started < 3, "an idle provider closes at once"
    assert provider.closed
    assert live(face, conn, name) == []
    with pytest.raises(errors.Unavailable, match="no provider offers"):
        face.run(tokenizer.apply("PERMIT", 1))


def test_the_provider_is_a_context_manager_and_the_remote_takes_a_timeout(face, conn):
    name = unique("Tokenizer")
    Tokenizer = declare_tokenizer(name)

    class Slow(Tokenizer):
        def apply(self, kind, duration):
            time.sleep(duration / 1000)
            return kind

        def verify(self, token):
            return True

    async def scoped():
        async with conn.provide(Slow()) as provider:
            assert await conn.remote(Tokenizer).apply("a", 0) == "a"
            with pytest.raises(errors.Timeout):
                await conn.remote(Tokenizer, timeout=0.2).apply("b", 1500)
        return provider

    if face.is_async:
        provider = face.run(scoped())
    else:
        with conn.provide(Slow()) as provider:
            assert conn.remote(Tokenizer).apply("a", 0) == "a"
            with pytest.raises(errors.Timeout):
                conn.remote(Tokenizer, timeout=0.2).apply("b", 1500)
    assert provider.closed
    assert live(face, conn, name) == []


# --- the type mapping ----------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: float
    y: float
    label: Optional[str] = None


@dataclasses.dataclass
class Tree:
    name: str
    children: List["Tree"]


class Box(TypedDict):
    corner: Point
    tags: List[str]


def declare_shapes(name: str) -> type:
    @busbar.interface(name)
    class Shapes(abc.ABC):
        @busbar.method
        @abc.abstractmethod
        def describe(self, points: List[Point], box: Box, extra: dict, blob: bytes,
                     scale: float = 1.0, note: Optional[str] = None,
                     count: Optional[int] = None, flag: bool = False) -> Dict[str, typing.Any]:
            ...

        @busbar.method
        @abc.abstractmethod
        def centre(self, points: List[Point]) -> Optional[Point]: ...

        @busbar.method
        @abc.abstractmethod
        def grow(self, tree: Tree) -> Tree: ...

        @busbar.method
        @abc.abstractmethod
        def echo_bytes(self, blob: bytes) -> bytes: ...

        @busbar.method
        @abc.abstractmethod
        def nothing(self) -> None: ...

    return Shapes


def test_values_cross_as_their_hints_say(face, conn):
    name = unique("Shapes")
    Shapes = declare_shapes(name)
    seen = []

    class Impl(Shapes):
        def describe(self, points, box, extra, blob, scale=1.0, note=None, count=None,
                     flag=False):
            seen.append((points, box, extra, blob, scale, note, count, flag))
            return {"n": len(points), "note": note, "count": count}

        def centre(self, points):
            if not points:
                return None
            return Point(sum(p.x for p in points) / len(points),
                         sum(p.y for p in points) / len(points), "centre")

        def grow(self, tree):
            return Tree(tree.name, tree.children + [Tree(f"{tree.name}.{len(tree.children)}", [])])

        def echo_bytes(self, blob):
            return blob[::-1]

        def nothing(self):
            return None

    provider = provide(face, conn, Impl())
    try:
        shapes = conn.remote(Shapes)
        points = [Point(0, 0), Point(2.0, 4.0, "b")]
        box: Box = {"corner": Point(1, 1), "tags": ["x", "y"]}
        got = face.run(shapes.describe(points, box, {"k": [1, "two"]}, b"\x00\xffhi",
                                       note="n"))
        assert got == {"n": 2.0, "note": "n", "count": None}  # a Struct's numbers are doubles
        (args,) = seen
        assert args[0] == points and isinstance(args[0][0], Point)  # dataclasses come back
        assert args[1] == {"corner": Point(1.0, 1.0, None), "tags": ["x", "y"]}  # a TypedDict
        assert args[2] == {"k": [1.0, "two"]}
        assert args[3] == b"\x00\xffhi"
        assert args[4:] == (1.0, "n", None, False)  # defaults apply; unset optionals are None

        # proto3 optional keeps 0 apart from "not given".
        face.run(shapes.describe([], box, {}, b"", count=0, flag=True))
        assert seen[-1][6] == 0 and seen[-1][7] is True

        assert face.run(shapes.centre(points)) == Point(1.0, 2.0, "centre")
        assert face.run(shapes.centre([])) is None  # message presence
        grown = face.run(shapes.grow(Tree("root", [Tree("a", [])])))
        assert grown == Tree("root", [Tree("a", []), Tree("root.1", [])])
        assert face.run(shapes.echo_bytes(b"abc")) == b"cba"
        assert face.run(shapes.nothing()) is None

        # By name: the synthesized messages, with protobuf's JSON (bytes as base64).
        reply = face.run(conn.call(f"{name}/echo_bytes",
                                   {"blob": base64.b64encode(b"xyz").decode()}))
        assert reply == {"value": base64.b64encode(b"zyx").decode()}
        assert face.run(conn.call(f"{name}/nothing", {})) == {}
        assert face.run(conn.call(f"{name}/centre", {"points": []})) == {}
        assert face.run(conn.call(f"{name}/centre", {"points": [{"x": 1, "y": 3}]})) == {
            "value": {"x": 1.0, "y": 3.0, "label": "centre"}}
        with pytest.raises(errors.InvalidArgument, match="does not fit"):
            face.run(conn.call(f"{name}/centre", {"points": [{"z": 1}]}))
    finally:
        close(face, provider)


def test_the_descriptor_is_synthesized_deterministically_from_the_hints():
    from google.protobuf import descriptor_pb2

    name = unique("Tokenizer")
    one = declare_tokenizer(name).__busbar_interface__.descriptors
    assert one == declare_tokenizer(name).__busbar_interface__.descriptors
    files = descriptor_pb2.FileDescriptorSet.FromString(one).file
    (file,) = files
    assert file.name == f"busbar/mesh/{name}.proto"
    assert file.package == name.rsplit(".", 1)[0]
    (service,) = file.service
    methods = {m.name: m for m in service.method}
    assert set(methods) == {"apply", "verify"}
    assert methods["verify"].options.idempotency_level == \
        descriptor_pb2.MethodOptions.IDEMPOTENT
    assert not methods["apply"].options.HasField("idempotency_level")
    messages = {m.name: m for m in file.message_type}
    request = messages[methods["apply"].input_type.rsplit(".", 1)[1]]
    assert [(f.name, f.number, f.type) for f in request.field] == [
        ("kind", 1, descriptor_pb2.FieldDescriptorProto.TYPE_STRING),
        ("duration", 2, descriptor_pb2.FieldDescriptorProto.TYPE_INT64)]
    reply = messages[methods["verify"].output_type.rsplit(".", 1)[1]]
    assert [(f.name, f.type) for f in reply.field] == [
        ("value", descriptor_pb2.FieldDescriptorProto.TYPE_BOOL)]

    shapes = descriptor_pb2.FileDescriptorSet.FromString(
        declare_shapes(unique("Shapes")).__busbar_interface__.descriptors).file[0]
    assert list(shapes.dependency) == ["google/protobuf/struct.proto"]
    by_name = {m.name: m for m in shapes.message_type}
    describe = next(m for n, m in by_name.items() if n.endswith("DescribeRequest"))
    fields = {f.name: f for f in describe.field}
    assert fields["points"].label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    assert fields["points"].type_name.endswith("Point")
    assert fields["extra"].type_name == ".google.protobuf.Struct"
    assert fields["blob"].type == descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    assert fields["scale"].type == descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE
    assert fields["note"].proto3_optional and fields["count"].proto3_optional
    assert fields["box"].type_name.endswith("Box")


# --- refused at declaration ----------------------------------------------------------------


def refusal(build) -> str:
    with pytest.raises(errors.InvalidArgument) as caught:
        build()
    return str(caught.value)


def test_an_unsupported_hint_is_refused_when_the_interface_is_declared():
    def with_param(hint, returns=str):
        def build():
            @busbar.interface("mesh.pytest.Refused")
            class Refused(abc.ABC):
                @busbar.method("go")
                @abc.abstractmethod
                def go(self, ok: int, odd: hint) -> returns: ...

        return build

    message = refusal(with_param(typing.Set[int]))
    assert "Refused.go, parameter 'odd'" in message and "Set[int]" in message, message
    assert "mesh.pytest.Refused" in message
    assert "list of lists" in refusal(with_param(List[List[int]]))
    assert "union of several types" in refusal(with_param(typing.Union[int, str]))
    assert "say what the list holds" in refusal(with_param(list))
    assert "Any has no protobuf form" in refusal(with_param(typing.Any))
    assert "Struct" in refusal(with_param(Dict[str, int]))
    assert "optional list" in refusal(with_param(Optional[List[int]]))
    assert "return value" in refusal(with_param(int, returns=complex))

    def unannotated():
        @busbar.interface("mesh.pytest.Refused")
        class Refused(abc.ABC):
            @busbar.method
            def go(self, x) -> int: ...

    assert "parameter 'x': no type hint" in refusal(unannotated)

    def no_return():
        @busbar.interface("mesh.pytest.Refused")
        class Refused(abc.ABC):
            @busbar.method
            def go(self, x: int): ...

    assert "no return type hint" in refusal(no_return)

    def star_args():
        @busbar.interface("mesh.pytest.Refused")
        class Refused(abc.ABC):
            @busbar.method
            def go(self, *x: int) -> int: ...

    assert "*args and **kwargs" in refusal(star_args)

    def two_streams():
        @busbar.interface("mesh.pytest.Refused")
        class Refused(abc.ABC):
            @busbar.method
            def go(self, xs: Iterator[int], y: int) -> int: ...

        return Refused

    assert "only parameter" in refusal(two_streams)

    def clash():
        @busbar.interface("mesh.pytest.Refused")
        class Refused(abc.ABC):
            @busbar.method("same")
            def one(self) -> int: ...

            @busbar.method("same")
            def two(self) -> int: ...

    assert "both named 'same'" in refusal(clash)

    def bad_name():
        @busbar.interface("mesh pytest")
        class Refused(abc.ABC):
            @busbar.method
            def go(self) -> int: ...

    assert "bad interface name" in refusal(bad_name)


def test_providing_checks_the_implementation(face, conn):
    name = unique("Tokenizer")
    Tokenizer = declare_tokenizer(name)

    class NotAnImplementation:
        pass

    with pytest.raises(errors.InvalidArgument, match="implements no @busbar.interface"):
        conn.provide(NotAnImplementation())

    class Generator(Tokenizer):
        def apply(self, kind, duration):
            yield kind

        def verify(self, token):
            return True

    with pytest.raises(errors.InvalidArgument, match="is a generator"):
        conn.provide(Generator())

    class Good(Tokenizer):
        def apply(self, kind, duration):
            return kind

        def verify(self, token):
            return True

    for bad in (0, -1, 1.5, True, 10_001):
        with pytest.raises(errors.InvalidArgument, match="bad concurrency"):
            conn.provide(Good(), concurrency=bad)
    with pytest.raises(errors.InvalidArgument, match="provide an instance"):
        conn.provide(Good)

    class Async(Tokenizer):
        async def apply(self, kind, duration):
            return kind

        def verify(self, token):
            return True

    if not face.is_async:
        with pytest.raises(errors.InvalidArgument, match="provide it with busbar.aio"):
            conn.provide(Async())
    assert live(face, conn, name) == []


def test_one_implementation_provides_several_interfaces(face, conn):
    tokenizer_name, probe_name = unique("Tokenizer"), unique("Probe")
    Tokenizer, Probe = declare_tokenizer(tokenizer_name), declare_probe(probe_name)

    class Both(ProbeFailures, Tokenizer, Probe):
        def apply(self, kind, duration):
            return kind

        def verify(self, token):
            return True

        def context(self, pause):
            return {"method": busbar.context().method}

    provider = provide(face, conn, Both())
    try:
        assert provider.services == [tokenizer_name, probe_name]
        assert face.run(conn.remote(Tokenizer).apply("k", 1)) == "k"
        assert face.run(conn.remote(Probe).context(0)) == {"method": f"{probe_name}/context"}
        (listed,) = live(face, conn, probe_name)
        assert listed["providers"][0]["id"] == provider.id
    finally:
        close(face, provider)


# --- errors and context --------------------------------------------------------------------


def declare_probe(name: str) -> type:
    @busbar.interface(name)
    class Probe(abc.ABC):
        @busbar.method
        @abc.abstractmethod
        def context(self, pause: float) -> dict: ...

        @busbar.method
        @abc.abstractmethod
        def fail(self, how: str) -> str: ...

    return Probe


def context_now() -> dict:
    ctx = busbar.context()
    return {"method": ctx.method, "caller": ctx.caller, "trace_id": ctx.trace_id,
            "metadata": ctx.metadata, "deadline": ctx.deadline, "time_left": ctx.time_left()}


class ProbeFailures:
    def fail(self, how):
        if how == "busbar":
            raise errors.NotFound("no such token here")
        if how == "trace":
            raise errors.FailedPrecondition(f"trace {busbar.context().trace_id}")
        raise ValueError(f"bad {how}")


def test_a_handler_exception_reaches_the_caller_typed(face, conn):
    name = unique("Probe")
    Probe = declare_probe(name)

    class Impl(ProbeFailures, Probe):
        def context(self, pause):
            return {}

    provider = provide(face, conn, Impl())
    try:
        probe = conn.remote(Probe)
        with pytest.raises(errors.NotFound) as caught:
            face.run(probe.fail("busbar"))
        assert caught.value.message == "no such token here"
        with pytest.raises(errors.InternalError) as caught:
            face.run(probe.fail("input"))
        assert caught.value.message == "ValueError: bad input"  # type and message, no traceback
        # The trace id the handler saw is the caller's.
        with pytest.raises(errors.FailedPrecondition) as caught:
            face.run(probe.fail("trace"))
        assert caught.value.trace_id and caught.value.message == f"trace {caught.value.trace_id}"
    finally:
        close(face, provider)


def test_busbar_context_shows_the_caller_trace_id_and_deadline(face, conn, busbar_node):
    name = unique("Probe")
    Probe = declare_probe(name)

    class Sync(ProbeFailures, Probe):
        def context(self, pause):
            first = context_now()
            time.sleep(pause)
            return {"first": first, "after": context_now()}

    class Async(ProbeFailures, Probe):
        async def context(self, pause):
            first = context_now()
            await asyncio.sleep(pause)
            return {"first": first, "after": context_now()}

    with pytest.raises(errors.FailedPrecondition, match="for mesh handlers"):
        busbar.context()
    provider = provide(face, conn, Async() if face.is_async else Sync())
    user = f"carol{uuid.uuid4().hex[:6]}"
    face.run(conn.create_user(user, "carol-password"))
    face.run(conn.grant(f"/services/{name}", user, "read"))
    carol = face.run(face.Connection.with_tls(
        busbar_node.address, busbar_node.admin["ca_pem"],
        server_name=busbar_node.admin.get("server_name"), user=user,
        password="carol-password"))
    try:
        probe = carol.remote(Probe, timeout=20)
        # Concurrent calls each see their own context (threads or tasks).
        if face.is_async:
            async def both():
                return await asyncio.gather(probe.context(0.3), probe.context(0.3))

            results = face.run(both())
        else:
            results = [None, None]
            workers = [threading.Thread(target=lambda i=i: results.__setitem__(
                i, probe.context(0.3))) for i in range(2)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
        for result in results:
            first, after = result["first"], result["after"]
            assert first["caller"] == user
            assert first["method"] == f"{name}/context"
            assert first["trace_id"] and first["trace_id"] == after["trace_id"]
            assert 0 < after["time_left"] < first["time_left"] <= 20
            assert abs(first["deadline"] - (time.time() + after["time_left"])) < 5
        assert results[0]["first"]["trace_id"] != results[1]["first"]["trace_id"]
        # Without a deadline there is none.
        plain = face.run(carol.remote(Probe).context(0))
        assert plain["first"]["deadline"] is None and plain["first"]["time_left"] is None
        # The caller's own trace id and x- metadata reach the handler.
        tagged = face.run(carol.remote(Probe, trace_id="order-77",
                                       metadata={"x-tenant": "acme"}).context(0))
        assert tagged["first"]["trace_id"] == "order-77"
        assert tagged["first"]["metadata"] == {"x-tenant": "acme"}
        # By name too (the reply in the protocol's own JSON form).
        by_name = face.run(carol.call(f"{name}/context", {"pause": 0}, trace_id="order-78"))
        assert "order-78" in json.dumps(by_name) and "order-77" not in json.dumps(by_name)
        for bad in ({"tenant": "acme"}, {"x-busbar-x": "1"}, {"x-ok": "\n"}):
            with pytest.raises(errors.InvalidArgument, match="bad metadata"):
                face.run(carol.remote(Probe, metadata=bad).context(0))
        with pytest.raises(errors.InvalidArgument, match="bad trace id"):
            face.run(carol.call(f"{name}/context", {"pause": 0}, trace_id=""))
        # An identity without read on the service may not call it.
        face.run(conn.revoke(f"/services/{name}", user))
        with pytest.raises(errors.PermissionDenied):
            face.run(carol.remote(Probe).context(0))
    finally:
        carol.close()
        close(face, provider)


# --- streaming -----------------------------------------------------------------------------


def declare_counter(name: str) -> type:
    @busbar.interface(name)
    class Counter(abc.ABC):
        @busbar.method
        @abc.abstractmethod
        def count(self, upto: int, word: str) -> Iterator[str]: ...

        @busbar.method
        @abc.abstractmethod
        def total(self, numbers: Iterator[int]) -> int: ...

        @busbar.method
        @abc.abstractmethod
        def shout(self, words: Iterator[str]) -> Iterator[str]: ...

    return Counter


def test_server_client_and_bidi_streaming(face, conn):
    name = unique("Counter")
    Counter = declare_counter(name)

    class SyncCounter(Counter):
        def count(self, upto, word):
            for i in range(upto):
                if word == "boom" and i == 2:
                    raise errors.ResourceExhausted(f"{busbar.context().method} ran out at {i}")
                yield f"{word} {i}"

        def total(self, numbers):
            return sum(numbers)

        def shout(self, words):
            for word in words:
                yield word.upper()

    class AsyncCounter(Counter):
        async def count(self, upto, word):
            for i in range(upto):
                await asyncio.sleep(0)
                if word == "boom" and i == 2:
                    raise errors.ResourceExhausted(f"{busbar.context().method} ran out at {i}")
                yield f"{word} {i}"

        async def total(self, numbers):
            return sum([n async for n in numbers])

        async def shout(self, words):
            async for word in words:
                yield word.upper()

    provider = provide(face, conn, AsyncCounter() if face.is_async else SyncCounter())
    try:
        counter = conn.remote(Counter)
        # More answers than the window of 16: credit flows.
        assert face.collect(counter.count(40, "n")) == [f"n {i}" for i in range(40)]
        assert face.run(counter.total(range(100))) == 4950
        assert face.collect(counter.shout(["a", "b", "c"])) == ["A", "B", "C"]
        assert face.collect(counter.count(0, "n")) == []
        # By name: each answer is a reply message.
        stream = face.run(conn.stream(f"{name}/count", {"upto": 2, "word": "w"}))
        assert face.collect(stream) == [{"value": "w 0"}, {"value": "w 1"}]
        # A handler that fails mid-stream: the answers sent, then its error.
        received = []
        answers = face.iterate(counter.count(5, "boom"))
        with pytest.raises(errors.ResourceExhausted, match=f"{name}/count ran out at 2"):
            while (item := face.next(answers)) is not END:
                received.append(item)
        assert received == ["boom 0", "boom 1"]
        # A reader that stops early ends the call; the provider goes on.
        first = face.next(face.iterate(counter.count(1000, "x")))
        assert first == "x 0"
        assert face.collect(counter.count(1, "y")) == ["y 0"]
    finally:
        close(face, provider)


def test_a_cancelled_call_stops_an_async_handler(aio_face_conn):
    face, conn = aio_face_conn
    name = unique("Probe")
    Probe = declare_probe(name)
    stopped = []

    class Impl(ProbeFailures, Probe):
        async def context(self, pause):
            try:
                await asyncio.sleep(pause)
            except asyncio.CancelledError:
                stopped.append(busbar.context().trace_id)
                raise
            return {}

    provider = provide(face, conn, Impl())
    try:
        with pytest.raises(errors.Timeout):
            face.run(conn.remote(Probe, timeout=0.3).context(30))
        face.wait_until(lambda: stopped, what="the handler's task to be cancelled")
    finally:
        close(face, provider)


def test_a_plain_handler_sees_its_call_cancelled(face, conn):
    name = unique("Probe")
    Probe = declare_probe(name)
    seen = []

    class Impl(ProbeFailures, Probe):
        def context(self, pause):
            call = busbar.context()
            assert not call.cancelled()
            until = time.monotonic() + pause
            while time.monotonic() < until and not call.cancelled():
                time.sleep(0.01)
            seen.append(call.cancelled())
            return {}

    provider = provide(face, conn, Impl())
    try:
        with pytest.raises(errors.Timeout):
            face.run(conn.remote(Probe, timeout=0.3).context(30))
        face.wait_until(lambda: seen, what="the handler to see its call cancelled")
        assert seen == [True]
    finally:
        close(face, provider)


@pytest.fixture
def aio_face_conn(busbar_node):
    f = Face("async")
    c = f.connect(busbar_node)
    yield f, c
    c.close()
    f.close()


# --- concurrency and draining --------------------------------------------------------------


def test_concurrency_bounds_the_handlers_running_at_once(face, conn):
    name = unique("Probe")
    Probe = declare_probe(name)
    running = []
    most = [0]
    lock = threading.Lock()

    class Impl(ProbeFailures, Probe):
        def context(self, pause):
            with lock:
                running.append(1)
                most[0] = max(most[0], len(running))
            time.sleep(pause)
            with lock:
                running.pop()
            return {}

    provider = provide(face, conn, Impl(), concurrency=2)
    try:
        probe = conn.remote(Probe)
        if face.is_async:
            async def many():
                await asyncio.gather(*(probe.context(0.2) for _ in range(6)))

            face.run(many())
        else:
            workers = [threading.Thread(target=probe.context, args=(0.2,)) for _ in range(6)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
        assert most[0] == 2
    finally:
        close(face, provider)


def test_close_lets_calls_in_flight_finish(face, conn):
    name = unique("Probe")
    Probe = declare_probe(name)
    started = threading.Event()

    class Impl(ProbeFailures, Probe):
        def context(self, pause):
            started.set()
            time.sleep(pause)
            return {"slept": pause}

    provider = provide(face, conn, Impl())
    probe = conn.remote(Probe)
    if face.is_async:
        async def drain():
            call = asyncio.ensure_future(probe.context(1.0))
            while not started.is_set():
                await asyncio.sleep(0.01)
            began = time.monotonic()
            await provider.close(grace=10)
            return await call, time.monotonic() - began

        answer, took = face.run(drain())
    else:
        answers = []
        caller = threading.Thread(target=lambda: answers.append(probe.context(1.0)))
        caller.start()
        assert started.wait(10)
        began = time.monotonic()
        provider.close(grace=10)
        took = time.monotonic() - began
        caller.join(10)
        (answer,) = answers
    assert answer == {"slept": 1.0}
    assert 0.5 < took < 5, took  # waited for the call, not for the whole grace
    assert live(face, conn, name) == []


# --- processes -----------------------------------------------------------------------------

WORKER_MODULE = '''
import abc
import busbar

NAME = {name!r}

@busbar.interface(NAME)
class Worker(abc.ABC):
    @busbar.method(idempotent=True)
    @abc.abstractmethod
    def who(self, n: int) -> str: ...
'''

PROVIDER_SCRIPT = '''
import sys, time
import busbar
from worker import Worker

config, tag, stuck = sys.argv[1], sys.argv[2], sys.argv[3] == "stuck"

class Impl(Worker):
    def who(self, n):
        if stuck:
            print("stuck", n, flush=True)
            time.sleep(120)
        return f"{tag} {n}"

with busbar.Connection.from_config(config) as conn:
    provider = conn.provide(Impl())
    print("ready", provider.id, flush=True)
    sys.stdin.read()  # until the test closes stdin
    provider.close()
'''

CALLER_SCRIPT = '''
import json, sys
import busbar
from worker import Worker

with busbar.Connection.from_config(sys.argv[1]) as conn:
    worker = conn.remote(Worker)
    print(json.dumps([worker.who(n) for n in range(int(sys.argv[2]))]))
'''


@pytest.fixture
def processes(tmp_path, busbar_node):
    """Starts Python scripts next to a worker interface of a fresh name."""
    name = unique("Worker")
    (tmp_path / "worker.py").write_text(WORKER_MODULE.format(name=name))
    (tmp_path / "provider.py").write_text(PROVIDER_SCRIPT)
    (tmp_path / "caller.py").write_text(CALLER_SCRIPT)
    config = str(busbar_node.data_dir / "admin.json")
    started = []

    def start(script: str, *args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, str(tmp_path / script), config, *args], cwd=tmp_path,
            env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        started.append(process)
        return process

    def line(process: subprocess.Popen, prefix: str) -> str:
        """The process's next stdout line, which starts with ``prefix``."""
        got: list = []
        reader = threading.Thread(target=lambda: got.append(process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(STARTUP_S)
        text = got[0] if got else ""
        if not text.startswith(prefix):
            process.kill()
            raise AssertionError(f"expected {prefix!r}, got {text!r}; stderr: "
                                 f"{process.communicate()[1]}")
        return text

    start.line = line  # type: ignore[attr-defined]
    start.name = name  # type: ignore[attr-defined]
    yield start
    for process in started:
        if process.poll() is None:
            process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_providers_in_two_processes_share_the_calls_of_a_caller_process(processes, busbar_node):
    one = processes("provider.py", "one", "-")
    two = processes("provider.py", "two", "-")
    processes.line(one, "ready")
    processes.line(two, "ready")
    caller = processes("caller.py", "40")
    out, err = caller.communicate(timeout=STARTUP_S)
    assert caller.returncode == 0, err
    answers = json.loads(out)
    assert sorted(answers, key=lambda a: int(a.split()[1])) == answers
    by = {tag: sum(a.startswith(tag) for a in answers) for tag in ("one", "two")}
    assert by["one"] + by["two"] == 40 and by["one"] >= 10 and by["two"] >= 10, by
    with busbar.Connection.from_config(busbar_node.data_dir / "admin.json") as conn:
        (service,) = [s for s in conn.services() if s["name"] == processes.name]
        assert sorted(p["calls_served"] for p in service["providers"]) == sorted(by.values())
    # A provider process that ends its stdin closes (drains) and is gone.
    one.stdin.close()
    assert one.wait(15) == 0
    two.stdin.close()
    assert two.wait(15) == 0


def test_an_idempotent_call_moves_to_another_process_when_its_provider_is_killed(
        processes, busbar_node):
    stuck = processes("provider.py", "stuck", "stuck")
    processes.line(stuck, "ready")
    with busbar.Connection.from_config(busbar_node.data_dir / "admin.json") as conn:
        from_worker = {}
        exec(WORKER_MODULE.format(name=processes.name), from_worker)
        worker = conn.remote(from_worker["Worker"], timeout=60)
        answers: list = []
        caller = threading.Thread(target=lambda: answers.append(worker.who(7)))
        caller.start()
        processes.line(stuck, "stuck 7")  # the call is in flight there
        good = processes("provider.py", "good", "-")
        processes.line(good, "ready")
        stuck.send_signal(signal.SIGKILL)
        caller.join(30)
        assert answers == ["good 7"]
        assert stuck.wait(10) == -signal.SIGKILL


# --- a stock grpcio client -----------------------------------------------------------------


def test_a_grpcio_client_built_from_reflection_calls_a_python_provider(conn, face,
                                                                       busbar_node):
    import grpc
    from test_grpcio import Dynamic, pool_for_symbols

    name = unique("Greeter")

    @busbar.interface(name)
    class Greeter(abc.ABC):
        @busbar.method("Greet")
        @abc.abstractmethod
        def greet(self, who: str, times: int, shout: Optional[bool] = None) -> str: ...

    class Impl(Greeter):
        def greet(self, who, times, shout=None):
            if times < 0:
                raise ValueError("times is negative")
            ctx = busbar.context()
            text = " ".join([f"hello {who}"] * times)
            text = text.upper() if shout else text
            return f"{text} | {ctx.caller} {ctx.trace_id} {ctx.metadata.get('x-team')}"

    credentials = grpc.ssl_channel_credentials(busbar_node.admin["ca_pem"].encode())
    options = [("grpc.ssl_target_name_override", busbar_node.admin["server_name"])]

    def grpcio_client() -> None:
        with grpc.secure_channel(busbar_node.address, credentials, options=options) as channel:
            auth = Dynamic(channel, pool_for_symbols(channel, "busbar.v1.Auth"))
            cred = busbar_node.admin["credential"]
            login = auth.unary("busbar.v1.Auth/Login", auth.message(
                "busbar.v1.LoginRequest")(password=auth.message(
                    "busbar.v1.PasswordCredential")(user=cred["user"],
                                                   password=cred["password"])))
            # Provided services are described to logged-in identities.
            session = [("x-busbar-session", login.token)]
            dynamic = Dynamic(channel, pool_for_symbols(channel, name, metadata=session))
            method = dynamic.pool.FindServiceByName(name).methods_by_name["Greet"]
            Request = dynamic.message(method.input_type.full_name)
            reply = dynamic.unary(
                f"{name}/Greet", Request(who="grpc", times=2, shout=True),
                metadata=session + [("x-trace-id", "grpc-trace-1"), ("x-team", "mesh")])
            assert reply.value == "HELLO GRPC HELLO GRPC | admin grpc-trace-1 mesh"
            # A Python exception reaches grpcio as a gRPC status with Busbar's code.
            with pytest.raises(grpc.RpcError) as caught:
                dynamic.unary(f"{name}/Greet", Request(who="x", times=-1), metadata=session)
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert caught.value.details() == "ValueError: times is negative"
            trailers = dict(caught.value.trailing_metadata() or ())
            assert trailers.get("busbar-error-code") == "INTERNAL", trailers

    provider = provide(face, conn, Impl())
    try:
        if face.is_async:
            # The provider serves on the face's loop, so the loop runs meanwhile.
            face.run(asyncio.to_thread(grpcio_client))
        else:
            grpcio_client()
    finally:
        close(face, provider)
