"""Transport sessions from Python against a real node, both faces:
`conn.transport(id)` and its push, pop, pop_message (leases), peek and
release, across threads, tasks and processes."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import threading
import time
import uuid

import pytest

import busbar
import busbar.aio
from busbar import errors
from conftest import REPO_ROOT, clean_env


def unique(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_push_and_pop_in_order_per_topic_with_metadata(face, conn):
    name = unique()
    session = face.run(conn.transport(name, {"owner": "tests"}))
    assert isinstance(session, face.module.TransportSession)
    assert (session.id, session.path, session.created) == (name, f"/transport/{name}", True)
    assert session.metadata == {"owner": "tests"}
    joined = face.run(conn.transport(name))
    assert joined.created is False and joined.metadata == {"owner": "tests"}

    first = face.run(session.push(b"a1", {"k": "v"}, topic="a"))
    face.run(session.push(bytearray(b"b1"), topic="b"))
    second = face.run(session.push(memoryview(b"a2"), topic="a"))
    assert isinstance(first, int) and second > first

    assert face.run(session.peek(topic="a")) == b"a1"  # left in place
    message = face.run(session.pop_message(topic="a"))
    assert isinstance(message, face.module.TransportMessage)
    assert (message.id, message.topic, message.payload) == (first, "a", b"a1")
    assert message.metadata == {"k": "v"}
    assert message.pushed_at.tzinfo == datetime.timezone.utc
    assert abs(message.pushed_at - datetime.datetime.now(datetime.timezone.utc)) < \
        datetime.timedelta(minutes=1)
    assert (message.receipt, message.lease_expires, message.leased) == ("", None, False)
    assert face.run(session.pop(topic="a")) == b"a2"
    assert face.run(session.pop(topic="b")) == b"b1"
    assert face.run(session.pop()) is None  # the "" topic is empty
    assert face.run(session.peek(topic="a")) is None
    assert face.run(session.release()) == 0


def test_a_pop_times_out_with_none(face, conn):
    session = face.run(conn.transport(unique()))
    started = time.monotonic()
    assert face.run(session.pop(timeout=0.3)) is None
    assert 0.25 < time.monotonic() - started < 5
    assert face.run(session.pop_message(timeout=0.1, topic="x")) is None
    face.run(session.release())


PUSHER = """
import sys, time, busbar
config, name = sys.argv[1], sys.argv[2]
with busbar.Connection.from_config(config) as conn:
    session = conn.transport(name)
    time.sleep(0.3)
    print(session.push(b"from another process", {"pid": "child"}, topic="t"), flush=True)
"""


def test_a_waiting_pop_gets_a_push_from_another_process(face, conn, busbar_node):
    name = unique()
    session = face.run(conn.transport(name))
    child = subprocess.Popen(
        [sys.executable, "-c", PUSHER, str(busbar_node.data_dir / "admin.json"), name],
        stdout=subprocess.PIPE, text=True, env=clean_env(), cwd=REPO_ROOT)
    try:
        message = face.run(session.pop_message(timeout=15, topic="t"))
        assert child.wait(timeout=15) == 0
    finally:
        child.kill()
        child.wait()
    assert message is not None, "no push came from the other process"
    assert (message.payload, message.metadata) == (b"from another process", {"pid": "child"})
    assert message.id == int(child.stdout.read().strip())
    face.run(session.release())


def test_leases_ack_nak_and_extend(face, conn):
    session = face.run(conn.transport(unique()))
    face.run(session.push(b"one"))
    face.run(session.push(b"two"))
    leased = face.run(session.pop_message(lease=30))
    assert leased.payload == b"one" and leased.leased and leased.receipt
    assert leased.lease_expires > datetime.datetime.now(datetime.timezone.utc)
    assert face.run(session.peek()) == b"two"  # the leased one is hidden
    face.run(leased.nak())  # back, first in its queue
    again = face.run(session.pop_message(lease=1))
    assert again.payload == b"one"
    before = again.lease_expires
    assert face.run(again.extend(60)) is None
    assert again.lease_expires > before + datetime.timedelta(seconds=30)
    face.run(again.ack())
    with pytest.raises(errors.NotFound):
        face.run(again.ack())  # settled already
    assert face.run(session.pop()) == b"two"
    plain = face.run(session.push(b"three"))
    popped = face.run(session.pop_message())
    assert popped.id == plain
    with pytest.raises(errors.InvalidArgument, match="not leased"):
        popped.ack()
    face.run(session.release())


def test_release_drops_messages_and_a_waiting_pop_raises_session_released(face, conn):
    session = face.run(conn.transport(unique()))
    face.run(session.push(b"x", topic="q"))
    face.run(session.push(b"y", topic="r"))
    assert face.run(session.pop(topic="r")) == b"y"
    face.run(session.push(b"z"))
    if face.is_async:
        async def both():
            waiting = asyncio.ensure_future(session.pop(timeout=15, topic="empty"))
            await asyncio.sleep(0.3)
            dropped = await session.release()
            try:
                await waiting
            except BaseException as error:  # noqa: BLE001 - checked below
                return dropped, error
            return dropped, None

        dropped, error = face.loop.run_until_complete(both())
    else:
        outcome = {}

        def wait():
            try:
                outcome["popped"] = session.pop(timeout=15, topic="empty")
            except BaseException as error:  # noqa: BLE001 - checked below
                outcome["error"] = error

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        dropped = session.release()
        waiter.join(timeout=15)
        error = outcome.get("error")
    assert dropped == 2
    assert isinstance(error, busbar.SessionReleased), repr(error)
    assert isinstance(error, errors.FailedPrecondition) and error.code == "FAILED_PRECONDITION"
    assert "released" in error.message
    with pytest.raises(errors.NotFound):
        face.run(session.pop())  # the session is gone


def test_rights_are_checked(face, conn, busbar_node):
    name = unique()
    session = face.run(conn.transport(name))
    user = unique("dave")
    face.run(conn.create_user(user, "dave-password"))
    dave = face.run(face.Connection.with_tls(
        busbar_node.address, busbar_node.admin["ca_pem"],
        server_name=busbar_node.admin.get("server_name"), user=user,
        password="dave-password"))
    try:
        with pytest.raises(errors.PermissionDenied):
            face.run(dave.transport(name))  # joining needs read
        with pytest.raises(errors.PermissionDenied):
            face.run(dave.transport(unique()))  # creating needs write on /transport
        face.run(conn.grant(session.path, user, "read"))
        theirs = face.run(dave.transport(name))
        with pytest.raises(errors.PermissionDenied):
            face.run(theirs.push(b"no"))  # pushing needs write
        with pytest.raises(errors.PermissionDenied):
            face.run(theirs.release())  # releasing needs admin
        face.run(session.push(b"for dave"))
        assert face.run(theirs.pop()) == b"for dave"
    finally:
        dave.close()
    face.run(session.release())


def test_bad_input_is_refused(face, conn):
    with pytest.raises(errors.InvalidArgument):
        face.run(conn.transport("bad id!"))
    with pytest.raises(TypeError, match="str"):
        face.run(conn.transport(unique(), {"n": 1}))
    session = face.run(conn.transport(unique()))
    with pytest.raises(TypeError, match="bytes"):
        face.run(session.push("text"))
    with pytest.raises(TypeError, match="bytes"):
        face.run(session.push(123))
    with pytest.raises(TypeError, match="str"):
        face.run(session.push(b"x", {"k": 2}))
    with pytest.raises(TypeError):
        face.run(session.pop(topic=3))
    with pytest.raises(errors.InvalidArgument):
        face.run(session.pop(timeout=-1))
    with pytest.raises(errors.InvalidArgument):
        face.run(session.pop_message(lease=0))
    face.run(session.release())


def test_leaving_the_context_does_not_release(face, conn):
    name = unique()
    if face.is_async:
        async def use():
            async with conn.transport(name) as session:
                await session.push(b"kept")
            return session

        session = face.loop.run_until_complete(use())
    else:
        with conn.transport(name) as session:
            session.push(b"kept")
    assert face.run(face.run(conn.transport(name)).pop()) == b"kept"
    face.run(session.release())
