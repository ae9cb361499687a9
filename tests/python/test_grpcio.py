"""A real node, driven with stock grpcio only: no generated busbar code.

Everything busbar-specific is discovered at run time through server
reflection, the way a generic client (grpcurl, Postman, a new language) would.
"""

from __future__ import annotations

import time
import uuid

import busbar
import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
# grpcio-reflection ships only a v1alpha client; the server speaks v1 and v1alpha.
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

CALL_TIMEOUT_S = 10

BUSBAR_SERVICES = {
    "busbar.v1.Auth",
    "busbar.v1.Node",
    "busbar.v1.Resources",
    "busbar.v1.Rooms",
    "busbar.v1.Wires",
}


@pytest.fixture(scope="module")
def channel(busbar_node):
    """A TLS channel that trusts only the node's own CA (from admin.json)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=busbar_node.admin["ca_pem"].encode()
    )
    # The address is 127.0.0.1:PORT; check the certificate against the name
    # the node's config says (localhost), as a configured client would.
    options = [("grpc.ssl_target_name_override", busbar_node.admin["server_name"])]
    with grpc.secure_channel(busbar_node.address, creds, options=options) as ch:
        yield ch


def reflect(channel, metadata=(), **request) -> reflection_pb2.ServerReflectionResponse:
    """One request/response on the (bidirectional) reflection stream."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    req = reflection_pb2.ServerReflectionRequest(**request)
    (resp,) = stub.ServerReflectionInfo(iter([req]), timeout=CALL_TIMEOUT_S,
                                        metadata=metadata)
    assert not resp.HasField("error_response"), resp.error_response
    return resp


def pool_for_symbols(channel, *symbols: str, metadata=()) -> descriptor_pool.DescriptorPool:
    """A descriptor pool holding the files that define symbols and all their
    imports (``metadata``: a session, to see provided services)."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def take(resp):
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.setdefault(fdp.name, fdp)

    for symbol in symbols:
        take(reflect(channel, metadata, file_containing_symbol=symbol))
    # A server may or may not send the transitive imports along; ask for
    # whatever is still missing by file name.
    while missing := {d for f in files.values() for d in f.dependency} - files.keys():
        for name in missing:
            take(reflect(channel, metadata, file_by_filename=name))

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str) -> None:  # dependencies first, as the pool requires
        if name in added:
            return
        for dep in files[name].dependency:
            add(dep)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    return pool


class Dynamic:
    """Unary calls to services whose message types come from reflection."""

    def __init__(self, channel, pool: descriptor_pool.DescriptorPool):
        self.channel = channel
        self.pool = pool

    def message(self, full_name: str):
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def unary(self, full_method: str, request=None, **call_kwargs):
        """Call "pkg.Service/Method" with request (default: an empty request)."""
        service_name, method_name = full_method.split("/")
        method = self.pool.FindServiceByName(service_name).methods_by_name[method_name]
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        call = self.channel.unary_unary(
            f"/{full_method}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        call_kwargs.setdefault("timeout", CALL_TIMEOUT_S)
        return call(request if request is not None else request_cls(), **call_kwargs)


@pytest.fixture(scope="module")
def dynamic(channel):
    # Node/Status is the call under test; Auth/Login gets its token.
    return Dynamic(channel, pool_for_symbols(channel, "busbar.v1.Node", "busbar.v1.Auth"))


@pytest.fixture(scope="module")
def token(dynamic, busbar_node) -> str:
    cred = busbar_node.admin["credential"]
    assert cred["kind"] == "password", cred["kind"]
    LoginRequest = dynamic.message("busbar.v1.LoginRequest")
    PasswordCredential = dynamic.message("busbar.v1.PasswordCredential")
    session = dynamic.unary(
        "busbar.v1.Auth/Login",
        LoginRequest(password=PasswordCredential(user=cred["user"], password=cred["password"])),
    )
    assert session.token
    assert session.identity.name == cred["user"]
    assert session.identity.admin
    return session.token


def test_reflection_lists_services(channel):
    resp = reflect(channel, list_services="")
    names = {s.name for s in resp.list_services_response.service}
    # Each reflection version lists itself only: v1alpha does not name
    # grpc.reflection.v1.ServerReflection (see test_reflection_v1_is_served).
    expected = BUSBAR_SERVICES | {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    missing = expected - names
    assert not missing, f"not listed: {sorted(missing)}; listed: {sorted(names)}"


def test_reflection_v1_is_served(channel):
    # grpcio-reflection has no v1 client, but v1 and v1alpha messages are the
    # same on the wire, so the v1alpha types can talk to the v1 service.
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (resp,) = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                   timeout=CALL_TIMEOUT_S)
    names = {s.name for s in resp.list_services_response.service}
    assert BUSBAR_SERVICES | {"grpc.reflection.v1.ServerReflection"} <= names, names


def test_reflection_describes_node_service(channel):
    pool = pool_for_symbols(channel, "busbar.v1.Node")
    node = pool.FindServiceByName("busbar.v1.Node")
    assert {"Status", "Events"} <= set(node.methods_by_name)
    assert node.methods_by_name["Status"].output_type.full_name == "busbar.v1.NodeStatus"


@pytest.mark.parametrize("header", ["authorization", "x-busbar-session"])
def test_login_then_status(dynamic, token, busbar_node, header):
    value = f"Bearer {token}" if header == "authorization" else token
    status = dynamic.unary("busbar.v1.Node/Status", metadata=[(header, value)])
    assert status.version == busbar_node.version
    assert status.tls is True
    assert status.store == "sqlite"
    assert status.bus == "local"
    assert status.node_id
    assert status.uptime_ms >= 0


def test_status_without_token_is_unauthenticated(dynamic):
    with pytest.raises(grpc.RpcError) as excinfo:
        dynamic.unary("busbar.v1.Node/Status")
    err = excinfo.value
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    trailers = dict(err.trailing_metadata() or ())
    assert trailers.get("busbar-error-code") == "UNAUTHENTICATED", trailers


@pytest.mark.parametrize("header", [("authorization", "Bearer not-a-real-token"),
                                    ("x-busbar-session", "not-a-real-token")])
def test_status_with_bad_token_is_unauthenticated(dynamic, header):
    with pytest.raises(grpc.RpcError) as excinfo:
        dynamic.unary("busbar.v1.Node/Status", metadata=[header])
    err = excinfo.value
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert dict(err.trailing_metadata() or ()).get("busbar-error-code") == "UNAUTHENTICATED"


def test_health_over_tls_without_credentials(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    # The whole node ("") and each busbar service by its full name.
    for service in ["", "busbar.v1.Auth", "busbar.v1.Node", "busbar.v1.Resources",
                    "busbar.v1.Rooms", "busbar.v1.Wires"]:
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


def test_plaintext_to_tls_port_fails_fast(busbar_node):
    # The node serves TLS only: a plaintext HTTP/2 client must get a prompt
    # UNAVAILABLE, not hang until its deadline (which would be DEADLINE_EXCEEDED).
    with grpc.insecure_channel(busbar_node.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as excinfo:
            stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        elapsed = time.monotonic() - started
    assert excinfo.value.code() == grpc.StatusCode.UNAVAILABLE, excinfo.value
    assert elapsed < CALL_TIMEOUT_S / 2, f"took {elapsed:.1f} s to fail"


def test_a_client_certificate_logs_in_from_stock_grpcio(dynamic, token, busbar_node):
    """mTLS with grpcio's own TLS (BoringSSL): a certificate the node's CA
    issued is presented in the handshake and Login takes it as the credential."""
    # The certificate comes from the SDK; everything after is stock grpcio.
    with busbar.Connection.from_config(busbar_node.data_dir / "admin.json") as admin:
        issued = admin.new_certificate(f"grpcio-{uuid.uuid4().hex[:8]}", create=True)
    creds = grpc.ssl_channel_credentials(
        root_certificates=issued["ca_pem"].encode(),
        private_key=issued["private_key_pem"].encode(),
        certificate_chain=issued["certificate_pem"].encode(),
    )
    options = [("grpc.ssl_target_name_override", busbar_node.admin["server_name"])]
    with grpc.secure_channel(busbar_node.address, creds, options=options) as channel:
        with_cert = Dynamic(channel, dynamic.pool)
        LoginRequest = dynamic.message("busbar.v1.LoginRequest")
        CertificateCredential = dynamic.message("busbar.v1.CertificateCredential")
        session = with_cert.unary("busbar.v1.Auth/Login",
                                  LoginRequest(certificate=CertificateCredential()))
        assert session.identity.name == issued["identity"]
        status = with_cert.unary("busbar.v1.Node/Status",
                                 metadata=[("authorization", f"Bearer {session.token}")])
        assert status.tls is True
    # The same Login over a connection that presented no certificate says so.
    with pytest.raises(grpc.RpcError) as excinfo:
        dynamic.unary("busbar.v1.Auth/Login",
                      dynamic.message("busbar.v1.LoginRequest")(
                          certificate=dynamic.message("busbar.v1.CertificateCredential")()))
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "presented none" in excinfo.value.details()
