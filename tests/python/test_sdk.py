"""The `busbar` Python package against a real node (TLS on, admin.json
credentials). Every test that takes `face` runs once per face, blocking and
asyncio, with the same body (see faces.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pytest

import busbar
import busbar.aio
from busbar import errors
from conftest import REPO_ROOT, busbar_bin, clean_env, cli, run_node
from faces import END, Face


@pytest.fixture
def aio_face():
    """The asyncio face alone, for what only it has."""
    f = Face("async")
    yield f
    f.close()


@pytest.fixture
def home(face, conn):
    """A fresh folder for one test, removed afterwards."""
    path = f"/home/admin/t-{uuid.uuid4().hex[:10]}"
    face.run(conn.mkdir(path))
    yield path
    try:
        face.run(conn.rm(path, recursive=True))
    except errors.BusbarError:
        pass


# --- connecting -------------------------------------------------------------

def test_constructors_and_credentials(face, busbar_node, tmp_path):
    admin = busbar_node.admin
    address = busbar_node.address
    cred = admin["credential"]

    with_config_file = face.connect(busbar_node)
    assert face.run(with_config_file.whoami())["name"] == "admin"

    with_dict = face.run(face.Connection.from_config(admin))
    assert face.run(with_dict.status())["tls"] is True

    # CA as PEM text, password credential.
    with_ca = face.run(face.Connection.with_tls(
        address, ca=admin["ca_pem"], server_name=admin.get("server_name"),
        user=cred["user"], password=cred["password"]))
    assert face.run(with_ca.whoami())["name"] == "admin"

    # A list of nodes: the first that answers is used (nothing listens on
    # port 1, so this is the second), and its status lists the node.
    listed = face.run(face.Connection.with_tls(
        ["127.0.0.1:1", address], ca=admin["ca_pem"], server_name=admin.get("server_name"),
        user=cred["user"], password=cred["password"]))
    status = face.run(listed.status())
    assert [n["address"] for n in status["nodes"]] == [f"https://{address}"]
    assert status["store_healthy"] and status["bus_healthy"]
    # This very call is not finished yet; the login and earlier calls are.
    assert status["calls_total"] >= 1 and 0 <= status["call_errors_total"] <= status["calls_total"]
    with pytest.raises(errors.NotFound):
        face.run(listed.get("/no/such/resource"))
    after = face.run(listed.status())
    assert after["call_errors_total"] >= status["call_errors_total"] + 1
    assert after["calls_total"] >= status["calls_total"] + 2
    with pytest.raises(errors.InvalidArgument, match="no address"):
        face.run(face.Connection.with_tls([], ca=admin["ca_pem"]))

    # CA as a file, pinned fingerprint.
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(admin["ca_pem"])
    pinned = face.run(face.Connection.with_tls(
        f"https://{address}", ca=str(ca_file), fingerprint=admin["server_fingerprint_sha256"],
        server_name=admin.get("server_name"), user=cred["user"], password=cred["password"]))

    # An API token.
    token = face.run(pinned.create_token(f"tok-{face.name}-{uuid.uuid4().hex[:6]}"))
    by_token = face.run(face.Connection.with_tls(
        address, ca=admin["ca_pem"], server_name=admin.get("server_name"), token=token))
    assert face.run(by_token.whoami())["name"] == "admin"

    # A key-pair identity made by `busbar identity new`, from its file and by key.
    robot = f"robot-{face.name}-{uuid.uuid4().hex[:6]}"
    robot_file = tmp_path / f"{robot}.json"
    cli(busbar_node, "identity", "new", robot, "--out", str(robot_file))
    by_key_file = face.run(face.Connection.from_config(str(robot_file)))
    assert face.run(by_key_file.whoami())["name"] == robot
    key = json.loads(robot_file.read_text())["credential"]
    by_key = face.run(face.Connection.with_tls(
        address, ca=admin["ca_pem"], server_name=admin.get("server_name"),
        key_name=key["name"], private_key=key["private_key"]))
    assert face.run(by_key.whoami())["name"] == robot

    # A connection as a context manager closes.
    if face.is_async:
        async def scoped():
            async with await face.Connection.from_config(admin) as c:
                await c.status()
            return c
        closed = face.run(scoped())
    else:
        with face.Connection.from_config(admin) as closed:
            closed.status()
    assert closed.closed
    with pytest.raises(errors.FailedPrecondition):
        face.run(closed.status())

    for c in (with_config_file, with_dict, with_ca, pinned, by_token, by_key_file, by_key):
        c.close()


def test_insecure_constructor_talks_plaintext(face, tmp_path):
    """Connection.insecure against a node started with --insecure."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [str(busbar_bin()), "serve", "--insecure", "--data", str(data), "--listen",
         f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0",
         "--grace", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean_env())
    try:
        for line in proc.stdout:
            if " serving on " in line:
                break
        admin = json.loads((data / "admin.json").read_text())
        cred = admin["credential"]
        c = face.run(face.Connection.insecure(f"127.0.0.1:{port}", user=cred["user"],
                                              password=cred["password"]))
        assert face.run(c.status())["tls"] is False
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_connect_failures_are_typed(face, busbar_node):
    admin = busbar_node.admin
    with pytest.raises(errors.AuthenticationError) as bad_password:
        face.run(face.Connection.with_tls(
            busbar_node.address, ca=admin["ca_pem"], server_name=admin.get("server_name"),
            user="admin", password="not-the-password"))
    assert bad_password.value.code == "UNAUTHENTICATED"
    assert bad_password.value.message
    # Plaintext against the TLS node: Unavailable with a hint.
    with pytest.raises(errors.Unavailable) as plaintext:
        face.run(face.Connection.insecure(busbar_node.address, token="x", connect_timeout=5))
    assert "TLS" in str(plaintext.value) or "tls" in str(plaintext.value)
    # A peer that accepts and never answers: Timeout once connect_timeout passes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with pytest.raises(errors.Timeout) as silence:
            face.run(face.Connection.with_tls(
                "https://127.0.0.1:%d" % silent.getsockname()[1], ca=admin["ca_pem"],
                token="x", connect_timeout=0.5))
        assert "connect timeout" in str(silence.value)
    # Checked before anything is sent.
    with pytest.raises(errors.InvalidArgument):
        face.Connection.with_tls("http://127.0.0.1:1")
    with pytest.raises(errors.InvalidArgument):
        face.run(face.Connection.with_tls(busbar_node.address, ca=admin["ca_pem"],
                                          user="admin", password="x", token="y"))
    with pytest.raises(errors.InvalidArgument):
        face.run(face.Connection.from_config({"address": "https://x", "nonsense": 1}))
    with pytest.raises(errors.InvalidArgument):
        face.run(face.Connection.from_config(busbar_node.data_dir / "missing.json"))


# --- errors -----------------------------------------------------------------

def test_every_error_code_has_its_class():
    proto = (REPO_ROOT / "proto" / "busbar" / "v1" / "errors.proto").read_text()
    codes = re.findall(r"^\s*([A-Z_]+) = \d+;", proto, flags=re.MULTILINE)
    codes = [c for c in codes if c != "ERROR_CODE_UNSPECIFIED"]
    assert len(codes) >= 14
    for code in codes:
        error = errors._from_code(code, "why", "trace-1")
        assert type(error) is not errors.BusbarError, code
        assert isinstance(error, errors.BusbarError)
        assert (error.code, error.message, error.trace_id) == (code, "why", "trace-1")
    assert issubclass(errors.InvalidArgument, ValueError)
    assert issubclass(errors.Timeout, TimeoutError)


def test_server_errors_are_typed(face, conn, home, busbar_node):
    with pytest.raises(errors.NotFound) as missing:
        face.run(conn.get(f"{home}/missing"))
    assert missing.value.trace_id
    face.run(conn.create(f"{home}/room", "room"))
    with pytest.raises(errors.AlreadyExists):
        face.run(conn.create(f"{home}/room", "room"))
    with pytest.raises(errors.FailedPrecondition):
        face.run(conn.rm(home))  # not empty
    with pytest.raises(errors.Unimplemented):
        face.run(conn.call("busbar.v1.Node/NoSuchMethod", {}))
    with pytest.raises(errors.InvalidArgument):
        face.run(conn.call("busbar.v1.Resources/Get", {"no_such_field": 1}))

    # A user without rights on the admin's home.
    name = f"bob-{uuid.uuid4().hex[:6]}"
    face.run(conn.create_user(name, "bob-password-1"))
    bob = face.run(face.Connection.with_tls(
        busbar_node.address, ca=busbar_node.admin["ca_pem"],
        server_name=busbar_node.admin.get("server_name"), user=name, password="bob-password-1"))
    with pytest.raises(errors.PermissionDenied):
        face.run(bob.mkdir(f"{home}/bobs"))
    face.run(conn.grant(home, name, "write"))
    face.run(bob.mkdir(f"{home}/bobs"))
    assert any(g["principal"] == name for g in face.run(conn.grants(home)))
    bob.close()


def test_client_side_validation_raises_busbar_errors(face, conn, home):
    bad = [
        lambda: conn.create(f"{home}/x", "teapot"),
        lambda: conn.grant(home, "someone", "everything"),
        lambda: conn.call("busbar.v1.Node/Status", {"x": object()}),
        lambda: conn.call("busbar.v1.Node/Status", {}, timeout=-1),
        lambda: conn.emit(f"{home}/x", "e", 2 ** 70),
        lambda: conn.sql(f"{home}/db").execute("SELECT 1", {1, 2}),
    ]
    for make in bad:
        with pytest.raises(errors.InvalidArgument):
            face.run(make())
    # Nothing was created by the refused create.
    assert face.run(conn.ls(home)) == []


# --- calls ------------------------------------------------------------------

def test_sdk_methods_answer_the_dicts_a_dynamic_call_does(face, conn, home):
    """The SDK's methods call the typed client; what they return is what
    `call` returns for the same RPC, key for key and type for type."""
    series = f"{home}/meter"
    face.run(conn.timeseries.create(series, resolution="15min", unit="MW"))
    face.run(conn.create(f"{home}/db", "database"))
    db = conn.sql(f"{home}/db")
    face.run(db.create_procedure("p", ["a"], "SELECT :a AS x"))
    face.run(conn.grant(home, "group:readers", "read"))
    pairs = [
        (conn.whoami(), "busbar.v1.Auth/WhoAmI", {}, None),
        (conn.get(series), "busbar.v1.Resources/Get", {"path": series}, None),
        (conn.ls(home), "busbar.v1.Resources/List", {"path": home}, "resources"),
        (conn.grants(home, effective=True), "busbar.v1.Resources/ListGrants",
         {"path": home, "effective": True}, "grants"),
        (db.procedures(), "busbar.v1.Sql/ListProcedures", {"database": db.path}, "procedures"),
        (conn.timeseries.describe(series), "busbar.v1.TimeSeries/Describe", {"path": series},
         None),
    ]
    for typed, method, request, field in pairs:
        dynamic = face.run(conn.call(method, request))
        assert face.run(typed) == (dynamic if field is None else dynamic[field]), method
    status, dynamic = face.run(conn.status()), face.run(conn.call("busbar.v1.Node/Status", {}))
    assert {k: type(v) for k, v in status.items()} == {k: type(v) for k, v in dynamic.items()}


def test_unary_call(face, conn):
    reply = face.run(conn.call("busbar.v1.Node/Status", {}, timeout=5))
    assert reply["version"] == face.run(conn.status())["version"]
    assert reply["tls"] is True


def test_server_streaming_and_timeout(face, conn):
    call = face.run(conn.stream("busbar.v1.Node/Events", {}, timeout=1.0))
    it = face.iterate(call)
    assert face.next(it)["kind"] == "READY"
    # The node sends nothing more; the call's deadline ends it.
    with pytest.raises(errors.Timeout):
        face.next(it)


def test_client_streaming(face, conn, home):
    room = f"{home}/room"
    face.run(conn.create(room, "room"))
    call = face.run(conn.stream("busbar.v1.Rooms/EmitStream"))
    for i in range(5):
        face.run(call.send({"path": room, "event": "n", "args": [i]}))
    call.end()
    with pytest.raises(errors.InvalidArgument):
        face.run(call.send({"path": room, "event": "late"}))
    (summary,) = face.collect(call)
    assert summary["events"] == 5


def test_bidi_streaming(face, conn):
    call = face.run(conn.stream("grpc.reflection.v1.ServerReflection/ServerReflectionInfo"))
    it = face.iterate(call)
    face.run(call.send({"list_services": ""}))
    first = face.next(it)
    names = {s["name"] for s in first["list_services_response"]["service"]}
    assert "busbar.v1.Node" in names
    face.run(call.send({"file_containing_symbol": "busbar.v1.Node"}))
    assert face.next(it)["file_descriptor_response"]["file_descriptor_proto"]
    call.end()
    assert face.next(it) is END


def test_handlers_attached_late_miss_nothing(face, conn, home):
    room = f"{home}/room"
    face.run(conn.create(room, "room"))
    call = face.run(conn.stream("busbar.v1.Rooms/Join", {"path": room}))
    # The join is live on the node once an emit reaches one member.
    face.wait_until(lambda: face.run(conn.emit(room, "probe")) == 1, what="the join")
    count = 200  # more than the client's 64-message buffer
    for i in range(count):
        face.run(conn.emit(room, "n", i))
    face.sleep(0.3)  # everything has arrived, nobody reads yet
    seen, ended = [], []

    @call.on("data")
    def data(message):
        seen.append(message)

    call.on("end", lambda: ended.append(True))

    def numbered():
        return [m["args"][0] for m in seen if m["event"] == "n"]

    face.wait_until(lambda: len(numbered()) == count, what="all events")
    assert seen[0]["kind"] == "JOINED"
    assert numbered() == list(range(count))
    with pytest.raises(errors.InvalidArgument):
        face.iterate(call)  # handlers read this call already
    face.run(conn.rm(room))  # ends the stream: DELETED, then end
    face.wait_until(lambda: ended == [True], what="the end handler")
    assert seen[-1]["kind"] == "DELETED"


def test_error_handler_runs_once(face, conn):
    call = face.run(conn.stream("busbar.v1.Node/Events", {}, timeout=0.5))
    got, failures, ends = [], [], []
    call.on("error", failures.append)
    call.on("end", lambda: ends.append(1))
    call.on("data", got.append)
    face.wait_until(lambda: failures, what="the error handler")
    face.sleep(0.1)
    assert [m["kind"] for m in got] == ["READY"]
    assert len(failures) == 1 and isinstance(failures[0], errors.Timeout)
    assert ends == []


def test_cancel_a_waiting_stream(face, conn):
    call = face.run(conn.stream("busbar.v1.Node/Events", {}))
    it = face.iterate(call)
    assert face.next(it)["kind"] == "READY"
    if face.is_async:
        async def cancel_soon():
            await asyncio.sleep(0.2)
            call.cancel()
        async def read():
            canceller = asyncio.ensure_future(cancel_soon())
            try:
                return await it.__anext__()
            finally:
                await canceller
        with pytest.raises(errors.Cancelled):
            face.run(read())
    else:
        threading.Timer(0.2, call.cancel).start()
        with pytest.raises(errors.Cancelled):
            next(it)
    assert face.run(conn.status())["version"]  # the connection is fine


# --- rooms ------------------------------------------------------------------

class Chat(busbar.Room):
    def __init__(self, path):
        super().__init__(path)
        self.log = []

    def on_init(self):
        self.log.append("init")

    def on_join(self):
        self.log.append("join")
        early = self.emit("early")  # emitted while on_join still runs
        if inspect.isawaitable(early):
            async def rest():
                await early
                await asyncio.sleep(0.2)
                self.log.append("join-done")
            return rest()
        time.sleep(0.2)
        self.log.append("join-done")

    @busbar.event("early")
    def on_early(self):
        self.log.append("early")

    @busbar.event("msg")
    def on_msg(self, text, number):
        self.log.append(("msg", text, number))

    def on_emit(self, event, *args):
        self.log.append(("other", event, *args))

    def on_leave(self):
        self.log.append("leave")

    def on_delete(self):
        self.log.append("delete")


class AsyncChat(Chat):
    @busbar.event("msg")
    async def on_msg(self, text, number):
        await asyncio.sleep(0)
        self.log.append(("async-msg", text, number))


def test_room_lifecycle(face, conn, home):
    path = f"{home}/chat"
    face.run(conn.create(path, "room"))
    me = Chat(path)
    assert face.run(me.join(conn)) is me
    assert me.log[:3] == ["init", "join", "join-done"]
    face.wait_until(lambda: "early" in me.log, what="the early event")
    assert me.log.index("early") > me.log.index("join-done")

    peer = Chat(path)
    face.run(peer.join(conn))
    assert face.run(me.emit("msg", "hi", 1)) == 2
    face.run(peer.emit_peers("msg", "only-me", 2))
    face.run(me.emit("unknown", [1, 2], {"a": None}))
    face.wait_until(lambda: ("other", "unknown", [1, 2], {"a": None}) in peer.log,
                    what="the unknown event")
    assert ("msg", "only-me", 2) in me.log
    assert ("msg", "only-me", 2) not in peer.log
    assert ("msg", "hi", 1) in me.log and ("msg", "hi", 1) in peer.log

    face.run(me.leave())
    face.wait_until(lambda: "leave" in me.log, what="on_leave")
    face.run(me.wait(5))
    with pytest.raises(errors.FailedPrecondition):
        face.run(me.emit("msg", "gone", 3))
    # Joining again: on_init does not run again.
    face.run(me.join(conn))
    assert me.log.count("init") == 1 and me.log.count("join") == 2
    face.run(conn.rm(path))
    face.wait_until(lambda: "delete" in me.log and "delete" in peer.log, what="on_delete")


def test_async_handlers(aio_face, busbar_node):
    face = aio_face
    conn = face.connect(busbar_node)
    path = f"/home/admin/async-{uuid.uuid4().hex[:8]}"
    face.run(conn.create(path, "room"))
    room = face.run(AsyncChat(path).join(conn))
    face.run(room.emit("msg", "x", 9))
    face.wait_until(lambda: ("async-msg", "x", 9) in room.log, what="the async handler")
    face.run(conn.rm(path))


def test_room_rejoins_after_node_restart(face, restartable_node):
    node = restartable_node.node
    conn = face.connect(node)
    path = "/home/admin/restart-chat"
    face.run(conn.create(path, "room"))
    room = face.run(Chat(path).join(conn))
    face.wait_until(lambda: "early" in room.log, what="the early event")
    old_member = room.member_id

    restartable_node.kill()
    restartable_node.start()
    face.wait_until(lambda: room.log.count("join-done") == 2, timeout=30, what="the rejoin")
    assert room.log.count("init") == 1
    assert room.member_id != old_member
    other = face.connect(restartable_node.node)
    face.run(other.emit(path, "msg", "after", 2))
    face.wait_until(lambda: ("msg", "after", 2) in room.log, what="an event after the rejoin")
    conn.close()
    other.close()


def test_a_resuming_wire_subscription_outlives_a_node_restart(face, restartable_node):
    import threading

    conn = face.connect(restartable_node.node)
    path = "/home/admin/restart-pipe"
    subscription = face.run(conn.wire(path).subscribe(create=True, resume=True))
    assert subscription.resubscribed == 0
    restartable_node.kill()
    restartable_node.start()
    # A blocking connection publishes until the subscription, open again on
    # the node that came back, hears it (what was sent before that is lost).
    heard = threading.Event()

    def publish() -> None:
        with busbar.Connection.from_config(restartable_node.node.data_dir / "admin.json") as pub:
            while not heard.wait(0.2):
                pub.wire(path).publish([b"after the restart"])

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        assert face.next(face.iterate(subscription)) == b"after the restart"
    finally:
        heard.set()
        publisher.join(10)
    assert subscription.resubscribed == 1, "the move is counted"
    subscription.close()
    conn.close()


# --- wires ------------------------------------------------------------------

def test_wire_publish_and_subscribe(face, conn, home):
    path = f"{home}/pipe"
    face.run(conn.create(path, "wire"))
    wire = conn.wire(path)
    subscription = face.run(wire.subscribe(timeout=5))
    chunks = [b"one", bytearray(b"two"), memoryview(b"three")]
    summary = face.run(wire.publish(chunks))
    assert int(summary["chunks"]) == 3
    it = face.iterate(subscription)
    assert [face.next(it) for _ in range(3)] == [b"one", b"two", b"three"]
    subscription.close()
    assert face.next(it) is END
    with pytest.raises(errors.InvalidArgument):
        face.run(wire.publish(["text is not bytes"]))


def test_publisher_held_back_by_a_stalled_subscriber_keeps_its_connection(face, tmp_path):
    """A subscriber that never reads fills its queues; the node then stops
    reading the publisher, whose small chunks (one HTTP/2 DATA frame each)
    pile up unread on the node until the wire stall cuts the subscriber.
    h2 closes a connection whose unread small frames cost more than half its
    window (ENHANCE_YOUR_CALM), so this once killed the publisher's whole
    connection; now the publish completes and the connection stays usable."""
    with run_node(tmp_path / "data", args=("--wire-stall", "2")) as node:
        publisher_conn = face.connect(node)
        subscriber_conn = face.connect(node)
        path = f"/home/admin/stalled-{uuid.uuid4().hex[:8]}"
        face.run(publisher_conn.create(path, "wire"))
        stalled = face.run(subscriber_conn.wire(path).subscribe())  # never read
        chunk = b"x" * 64
        count = 80_000  # well past what the subscriber's windows and queues hold
        summary = face.run(publisher_conn.wire(path).publish(chunk for _ in range(count)))
        assert int(summary["chunks"]) == count
        assert face.run(publisher_conn.status())["tls"] is True
        # The subscriber's own connection held what the node had sent it
        # (small frames too): it gets those chunks, then learns why it was cut.
        received = 0
        it = face.iterate(stalled)
        with pytest.raises(errors.SlowConsumer):
            while face.next(it) is not END:
                received += 1
        assert 0 < received < count
        subscriber_conn.close()
        publisher_conn.close()


def test_subscriber_that_stops_reading_a_trickle_is_cut_not_its_connection(tmp_path):
    """Chunks published one at a time reach a subscriber as one small HTTP/2
    DATA frame each; one that stops reading holds them unread until its
    stream window is full and the node's wire stall cuts it. h2 closes a
    connection whose unread small frames count for more than half its
    window: with hyper's 5 MiB client window that was after about 14,500
    chunks, before the window was full, and the subscriber's whole
    connection failed (RESOURCE_EXHAUSTED, too_many_data_frames) instead of
    the subscription ending with SlowConsumer. The connection window is what
    this tests, shared by both faces, so the blocking face alone runs it."""
    with run_node(tmp_path / "data", args=("--wire-stall", "2")) as node:
        publisher = busbar.Connection.from_config(node.data_dir / "admin.json")
        subscriber = busbar.Connection.from_config(node.data_dir / "admin.json")
        path = f"/home/admin/trickle-{uuid.uuid4().hex[:8]}"
        publisher.create(path, "wire")
        stalled = subscriber.wire(path).subscribe()  # not read until the end
        count = 36_000  # past the 2 MiB stream window in 71 B frames

        def one_at_a_time():
            for _ in range(count):
                time.sleep(0.00005)  # one frame per chunk: nothing to batch
                yield b"t" * 64

        assert int(publisher.wire(path).publish(one_at_a_time())["chunks"]) == count
        received = 0
        with pytest.raises(errors.SlowConsumer):
            for _ in stalled:
                received += 1
        assert 14_500 < received < count
        subscriber.close()
        publisher.close()


def test_async_publish_takes_an_async_iterable(aio_face, busbar_node):
    face = aio_face
    conn = face.connect(busbar_node)
    path = f"/home/admin/apipe-{uuid.uuid4().hex[:8]}"
    face.run(conn.create(path, "wire"))
    sub = face.run(conn.wire(path).subscribe())

    async def chunks():
        for i in range(100):
            yield f"{i};".encode()

    face.run(conn.wire(path).publish(chunks()))
    received = b""
    it = sub.__aiter__()
    while received.count(b";") < 100:
        received += face.next(it)
    assert received == b"".join(f"{i};".encode() for i in range(100))
    face.run(conn.rm(path))


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf"), 0.011, "fast", None])
def test_spin_limit_refuses_bad_values_and_keeps_the_old_one(bad):
    before = busbar.spin_limit()
    with pytest.raises(errors.InvalidArgument):
        busbar.set_spin_limit(bad)
    assert busbar.spin_limit() == before


_SPIN_LIMIT_SCRIPT = "import busbar; print(busbar.spin_limit())"


@pytest.mark.parametrize("given, limit", [(None, 0.0), ("", 0.0), ("0.0002", 0.0002),
                                          (" 1e-3 ", 0.001), ("0", 0.0)])
def test_spinning_is_off_unless_the_environment_asks(given, limit):
    env = clean_env() if given is None else clean_env(BUSBAR_SPIN_LIMIT=given)
    result = subprocess.run([sys.executable, "-c", _SPIN_LIMIT_SCRIPT], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) == pytest.approx(limit)


@pytest.mark.parametrize("given", ["fast", "-1", "nan", "0.02", "200us"])
def test_a_bad_spin_limit_in_the_environment_stops_the_import(given):
    result = subprocess.run([sys.executable, "-c", _SPIN_LIMIT_SCRIPT],
                            env=clean_env(BUSBAR_SPIN_LIMIT=given),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "BUSBAR_SPIN_LIMIT" in result.stderr


def test_calls_work_with_spinning_off_and_on(face, conn):
    before = busbar.spin_limit()
    try:
        for limit in (0.0002, 0.01, 0):
            busbar.set_spin_limit(limit)
            assert busbar.spin_limit() == pytest.approx(limit)
            for _ in range(20):
                assert face.run(conn.status())["tls"] is True
            with pytest.raises(errors.NotFound):
                face.run(conn.ls("/no/such/folder"))
    finally:
        busbar.set_spin_limit(before)


# --- SQL --------------------------------------------------------------------

def test_sql_to_pyarrow(face, conn, home):
    path = f"{home}/shop"
    db = face.database(conn, path, "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, "
                       "price REAL, data BLOB, added TIMESTAMP, ok BOOLEAN)")
    naive = dt.datetime(2026, 1, 2, 3, 4, 5, 6000)
    aware = dt.datetime(2026, 1, 2, 5, 4, 5, 6000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    inserted = face.run(db.execute(
        "INSERT INTO items (name, price, data, added, ok) VALUES (?, ?, ?, ?, ?)",
        ["apple", 1.25, b"\x00\x01", naive, True]))
    assert inserted.schema.metadata[b"busbar.rows_affected"] == b"1"
    face.run(db.execute(
        "INSERT INTO items (name, price, data, added, ok) "
        "VALUES (:name, :price, :data, :added, :ok)",
        {"name": "pear", "price": None, "data": None, "added": aware, "ok": None}))

    table = face.run(db.execute("SELECT * FROM items ORDER BY id"))
    assert isinstance(table, pa.Table)
    assert table.num_rows == 2
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("price").type == pa.float64()
    assert table.schema.field("name").type == pa.string()
    added = table.schema.field("added").type
    assert pa.types.is_timestamp(added) and added.tz in ("UTC", "+00:00")
    rows = table.to_pylist()
    utc = dt.timezone.utc
    assert rows[0]["added"] == naive.replace(tzinfo=utc)  # naive = UTC
    assert rows[1]["added"] == aware.astimezone(utc)       # aware: converted
    assert rows[1]["price"] is None and rows[1]["data"] is None
    assert rows[0]["data"] == b"\x00\x01"
    frame = table.to_pandas()
    assert str(frame["added"].dt.tz) == "UTC"

    empty = face.run(db.execute("SELECT * FROM items WHERE id < 0"))
    assert empty.num_rows == 0 and "name" in empty.column_names

    # Bad input changes nothing.
    with pytest.raises(errors.InvalidArgument):
        face.run(db.execute("INSERT INTO items (name) VALUES (?)", [dt.time(12, 0)]))
    with pytest.raises(errors.InvalidArgument):
        face.run(db.execute("INSERT INTO items (name) VALUES (?)", ["a", "b"]))
    with pytest.raises(errors.BusbarError):
        face.run(db.execute("SELEC nonsense"))
    count = face.run(db.execute("SELECT count(*) AS n FROM items"))
    assert count.column("n").to_pylist() == [2]


# --- threads and the event loop ---------------------------------------------

def test_threads_share_one_blocking_connection(busbar_node):
    conn = busbar.Connection.from_config(busbar_node.data_dir / "admin.json")
    path = f"/home/admin/threads-{uuid.uuid4().hex[:8]}"
    conn.create(path, "database")
    db = conn.sql(path)
    db.execute("CREATE TABLE hits (thread INTEGER, i INTEGER)")
    failures = []

    def work(n):
        try:
            for i in range(15):
                conn.status()
                db.execute("INSERT INTO hits VALUES (?, ?)", [n, i])
        except Exception as error:  # surfaced below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert db.execute("SELECT count(*) AS n FROM hits").column("n").to_pylist() == [120]
    conn.rm(path)
    conn.close()


_INTERRUPTED_SCRIPT = r"""
import signal, socket, sys, busbar

# Started from a background job, a process inherits SIGINT ignored (a shell
# without job control ignores it for asynchronous commands), and Python then
# installs no KeyboardInterrupt handler: give it Python's usual one.
signal.signal(signal.SIGINT, signal.default_int_handler)

def attempt(label, blocking):
    print("waiting", label, flush=True)
    try:
        blocking()
        print(label, "returned", flush=True)
    except KeyboardInterrupt:
        print(label, "interrupted", flush=True)
    except busbar.errors.BusbarError as error:
        print(label, "failed", error.code, flush=True)

# A call that waits: a TLS handshake with a peer that accepts and never answers.
silent = socket.socket()
silent.bind(("127.0.0.1", 0))
silent.listen()
address = "https://127.0.0.1:%d" % silent.getsockname()[1]
attempt("call", lambda: busbar.Connection.with_tls(
    address, fingerprint="ab" * 32, token="t", connect_timeout=60))
# A stream read that waits: a wire nobody publishes to.
conn = busbar.Connection.from_config(sys.argv[1])
conn.create(sys.argv[2], "wire")
subscription = conn.wire(sys.argv[2]).subscribe()
attempt("read", lambda: next(iter(subscription)))
conn.rm(sys.argv[2])
"""


def test_ctrl_c_interrupts_blocking_waits(busbar_node):
    """SIGINT ends a blocking call and a blocking stream read with
    KeyboardInterrupt (Python's own handler), long before any timeout."""
    wire = f"/home/admin/ctrl-c-{uuid.uuid4().hex[:8]}"
    child = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED_SCRIPT,
         str(busbar_node.data_dir / "admin.json"), wire],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        for label in ("call", "read"):
            assert child.stdout.readline().split() == ["waiting", label]
            time.sleep(0.5)  # well inside the wait; a check comes every 100 ms
            child.send_signal(signal.SIGINT)
            assert child.stdout.readline().split() == [label, "interrupted"]
        assert child.wait(timeout=30) == 0, child.stderr.read()
    finally:
        child.kill()
        child.wait()


@pytest.mark.asyncio
async def test_asyncio_face_never_blocks_the_loop(busbar_node):
    conn = await busbar.aio.Connection.from_config(busbar_node.data_dir / "admin.json")
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    call = await conn.stream("busbar.v1.Node/Events", {})
    assert (await call.__anext__())["kind"] == "READY"
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(call.__anext__(), 0.5)  # waits on the network
    assert ticks >= 20
    # Many calls at once on one connection.
    statuses = await asyncio.gather(*(conn.status() for _ in range(50)))
    assert len({s["node_id"] for s in statuses}) == 1
    ticking.cancel()
    call.cancel()
    conn.close()


@pytest.mark.asyncio
async def test_cancelled_await_is_clean(busbar_node):
    conn = await busbar.aio.Connection.from_config(busbar_node.data_dir / "admin.json")
    path = f"/home/admin/aw-{uuid.uuid4().hex[:8]}"
    await conn.create(path, "wire")
    sub = await conn.wire(path).subscribe()
    waiting = asyncio.ensure_future(sub.__anext__())
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await conn.status())["version"]
    # The cancelled read was aborted on Busbar's runtime too: had it lived
    # on, it would take the next chunk and nobody would ever see it.
    await conn.wire(path).publish([b"after the cancel"])
    assert await asyncio.wait_for(sub.__anext__(), 10) == b"after the cancel"
    await conn.rm(path)
    conn.close()


class _NoReadersLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch descriptors, as Windows' proactor loop."""

    def add_reader(self, *args, **kwargs):
        raise NotImplementedError


@pytest.mark.parametrize("loop_class", [asyncio.SelectorEventLoop, _NoReadersLoop])
def test_awaited_results_reach_each_loop(busbar_node, loop_class):
    # Finished work reaches a loop through its doorbell (a pipe the loop
    # watches) or, where the loop cannot watch one, call_soon_threadsafe.
    # Values and errors, many at once, on successive loops.
    config = busbar_node.data_dir / "admin.json"

    async def burst():
        conn = await busbar.aio.Connection.from_config(config)
        statuses = await asyncio.gather(*(conn.status() for _ in range(200)))
        assert len({s["node_id"] for s in statuses}) == 1
        failures = await asyncio.gather(
            *(conn.call("busbar.v1.Resources/Get", {"path": "/no/such"}) for _ in range(20)),
            return_exceptions=True)
        assert all(isinstance(f, errors.NotFound) for f in failures), failures
        conn.close()

    for _ in range(2):
        loop = loop_class()
        try:
            loop.run_until_complete(burst())
        finally:
            loop.close()


def test_an_aio_connection_belongs_to_the_loop_that_opened_it(busbar_node):
    """Its socket is watched by that loop: awaited in another loop, a call
    fails with FailedPrecondition instead of waiting on a loop that may
    never run again; its own loop keeps working."""
    config = busbar_node.data_dir / "admin.json"
    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        conn = first.run_until_complete(busbar.aio.Connection.from_config(config))
        with pytest.raises(errors.FailedPrecondition, match="event loop that opened it"):
            second.run_until_complete(conn.status())
        assert first.run_until_complete(conn.status())["version"]
        conn.close()
    finally:
        first.close()
        second.close()


def test_aio_outside_a_running_loop_is_a_typed_error(busbar_node):
    with pytest.raises(errors.FailedPrecondition):
        opening = busbar.aio.Connection.from_config(busbar_node.data_dir / "admin.json")
        opening.__await__().send(None)
