"""Client certificates (mTLS) from Python, both faces: issued by the node's
CA over a key made in this process, logged in with, renewed, revoked; and a
node that requires a certificate of every connection."""

from __future__ import annotations

import uuid

import pytest

from busbar import errors
from conftest import run_node
from test_sdk import aio_face  # noqa: F401  (shared fixtures; face and conn are in conftest)


def _with_certificate(face, node, issued, **credential):
    return face.run(face.Connection.with_tls(
        node.admin["address"], issued["ca_pem"], server_name=node.admin.get("server_name"),
        certificate=issued["certificate_pem"], certificate_key=issued["private_key_pem"],
        **credential))


def test_a_certificate_logs_in_and_revoking_it_refuses_it(face, conn, busbar_node):
    name = f"cert-{uuid.uuid4().hex[:8]}"
    issued = face.run(conn.new_certificate(name, days=7, create=True))
    assert issued["identity"] == name
    assert "PRIVATE KEY" in issued["private_key_pem"]
    week_ms = 7 * 86_400_000
    assert abs(issued["expires_ms"] - issued["created_ms"] - week_ms) < 600_000

    holder = _with_certificate(face, busbar_node, issued)
    me = face.run(holder.whoami())
    assert (me["name"], me["kind"]) == (name, "CERTIFICATE")

    listed = face.run(conn.certificates(name))
    assert [c["fingerprint"] for c in listed] == [issued["fingerprint"]]
    assert face.run(conn.revoke_certificate(issued["fingerprint"])) is None
    # Its session ends, and a new handshake is refused by name.
    with pytest.raises(errors.AuthenticationError, match="has been revoked"):
        face.run(holder.whoami())
    with pytest.raises(errors.AuthenticationError,
                       match="the node refused this client certificate: it has been revoked"):
        _with_certificate(face, busbar_node, issued)
    holder.close()

    # A renewal for the same identity works; the revoked one stays revoked.
    renewed = face.run(conn.new_certificate(name))
    again = _with_certificate(face, busbar_node, renewed)
    assert face.run(again.whoami())["name"] == name
    again.close()
    states = {c["fingerprint"]: c.get("revoked", False)
              for c in face.run(conn.certificates(name))}
    assert states == {issued["fingerprint"]: True, renewed["fingerprint"]: False}


def test_bad_certificate_arguments_are_refused_and_change_nothing(face, conn):
    name = f"cert-{uuid.uuid4().hex[:8]}"
    for days in (0, 5000, 1.5, True):
        with pytest.raises(errors.InvalidArgument, match="bad days"):
            face.run(conn.new_certificate(name, days=days, create=True))
    with pytest.raises(errors.NotFound, match=f"no identity named {name}"):
        face.run(conn.new_certificate(name))
    with pytest.raises(errors.InvalidArgument, match="bad fingerprint"):
        face.run(conn.revoke_certificate("not hex"))
    with pytest.raises(errors.NotFound, match=f"no identity named {name}"):
        face.run(conn.certificates(name))
    names = [i["name"] for i in face.run(conn.call("busbar.v1.Auth/ListIdentities"))
             ["identities"]]
    assert name not in names


def test_a_node_that_requires_certificates(face, tmp_path):
    with run_node(tmp_path / "data", args=("--client-certs", "required")) as node:
        admin = face.connect(node)  # admin.json carries a certificate of its own
        face.run(admin.call("busbar.v1.Auth/CreateUser",
                            {"name": "bob", "password": "bob-password"}))
        with pytest.raises(errors.AuthenticationError, match="requires a client certificate"):
            face.run(face.Connection.with_tls(
                node.admin["address"], node.admin["ca_pem"],
                server_name=node.admin.get("server_name"),
                user="bob", password="bob-password"))
        laptop = face.run(admin.new_certificate("laptop", create=True))
        # Beside a password the certificate is only presented: bob logs in.
        bob = _with_certificate(face, node, laptop, user="bob", password="bob-password")
        assert face.run(bob.whoami())["name"] == "bob"
        # Alone, it logs in as its own identity.
        alone = _with_certificate(face, node, laptop)
        assert face.run(alone.whoami())["name"] == "laptop"
        for c in (bob, alone, admin):
            c.close()
