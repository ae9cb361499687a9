"""The dicts the SDK's methods return, as TypedDicts, for annotations::

    from busbar.types import Resource

    def owners(resources: list[Resource]) -> set[str]: ...

Keys are the protocol's field names, every field is present (but for the
few marked otherwise, which the protocol may leave out); enum fields
are their names in capitals (``"FOLDER"``, ``"READ"``), times ``*_ms`` are
epoch milliseconds UTC. Both faces return the same dicts (the asyncio face
awaited). Dynamic calls (``conn.call``, ``conn.stream``) return plain dicts
of whatever the method answers.
"""

from __future__ import annotations

from typing import List, TypedDict


class ClusterNode(TypedDict):
    """A node of ``NodeStatus["nodes"]``."""

    node_id: str
    #: Where clients dial it.
    address: str
    connections: int
    started_ms: int
    #: When it last reported itself (every 5 s).
    seen_ms: int


class NodeStatus(TypedDict):
    """``conn.status()``."""

    version: str
    node_id: str
    uptime_ms: int
    started_ms: int
    #: "sqlite" (embedded) or "postgres".
    store: str
    #: "local" (embedded) or "nats".
    bus: str
    tls: bool
    #: Client connections open now.
    connections: int
    #: The nodes sharing this node's store that reported in the last 15 s
    #: (this node alone when embedded).
    nodes: List[ClusterNode]
    #: Whether this node reaches its store and its bus right now.
    store_healthy: bool
    bus_healthy: bool
    #: Calls this node finished since it started, and those that failed.
    calls_total: int
    call_errors_total: int


class Identity(TypedDict):
    """``conn.whoami()``, ``conn.create_user(...)``."""

    id: str
    name: str
    #: "USER", "KEY" or "CERTIFICATE".
    kind: str
    #: Holds admin on "/".
    admin: bool
    home: str
    created_ms: int
    revoked: bool
    groups: List[str]
    #: Base64 Ed25519 public key (KEY identities), else "".
    public_key: str


class SeriesSpec(TypedDict):
    """A time series' definition."""

    #: "BREAKPOINT", "MIN1", "MIN5", "MIN10", "MIN15", "MIN30", "HOUR", "DAY",
    #: "WEEK", "MONTH" or "YEAR".
    resolution: str
    unit: str
    #: "STAIRCASE" or "PIECEWISE_LINEAR".
    curve: str
    #: IANA name; "" is UTC.
    time_zone: str


class _ResourceOfKind(TypedDict, total=False):
    #: TIMESERIES only: other kinds have no ``series`` key.
    series: SeriesSpec


class Resource(_ResourceOfKind):
    """``conn.get/create/mkdir/mv(...)``, items of ``conn.ls(...)``,
    ``conn.timeseries.create(...)``."""

    #: UUID, stable across moves.
    id: str
    path: str
    name: str
    #: "FOLDER", "ROOM", "WIRE", "DATABASE" or "TIMESERIES".
    kind: str
    #: The identity that created it.
    owner: str
    created_ms: int


class Grant(TypedDict):
    """Items of ``conn.grant/revoke/grants(...)``."""

    #: An identity name, or "group:<name>".
    principal: str
    #: "READ", "WRITE" or "ADMIN".
    right: str
    #: Where the grant is set (an ancestor, for inherited ones).
    path: str


class CertificateInfo(TypedDict):
    """Items of ``conn.certificates(...)``."""

    #: Hex SHA-256 of the certificate (DER).
    fingerprint: str
    identity: str
    #: Hex.
    serial: str
    created_ms: int
    expires_ms: int
    revoked: bool


class NewCertificate(TypedDict):
    """``conn.new_certificate(...)``: PEMs for ``Connection.with_tls(
    certificate=, certificate_key=, ca=)`` and what the node recorded."""

    certificate_pem: str
    #: Made in this process; the node never saw it.
    private_key_pem: str
    ca_pem: str
    fingerprint: str
    identity: str
    serial: str
    created_ms: int
    expires_ms: int


class Procedure(TypedDict):
    """``db.create_procedure(...)``, items of ``db.procedures()``."""

    name: str
    #: Parameter names, in positional order.
    params: List[str]
    #: SQL statements using ``:name`` parameters.
    body: str
    created_ms: int


class Empty(TypedDict):
    """The reply of a call that answers nothing but success
    (``db.drop_procedure(...)``): ``{}``."""


class SqlColumn(TypedDict):
    name: str
    #: As declared in the schema ("" for expressions).
    declared_type: str
    #: E.g. "Int64", "Utf8", "Timestamp(ms, UTC)".
    arrow_type: str


class ExecuteSummary(TypedDict):
    """``db.executemany(...)``."""

    #: Rows returned.
    rows: int
    #: Rows changed by INSERT, UPDATE or DELETE.
    rows_affected: int
    last_insert_rowid: int
    columns: List[SqlColumn]


class _SeriesExtent(TypedDict, total=False):
    #: The first and last points' times: no such keys when the series is empty.
    first_ms: int
    last_ms: int


class SeriesInfo(_SeriesExtent):
    """``conn.timeseries.describe(...)``."""

    path: str
    spec: SeriesSpec
    points: int


class WriteSummary(TypedDict):
    """``conn.timeseries.write(...)``: the interval ``[start_ms, end_ms)``
    that was replaced."""

    points_written: int
    #: Old points in the interval that were replaced or removed.
    points_deleted: int
    start_ms: int
    end_ms: int


class PublishSummary(TypedDict):
    """``wire.publish(...)``."""

    chunks: int
    bytes: int
    #: Chunks no subscriber was there to receive.
    unheard_chunks: int


class SessionSummary(TypedDict):
    """``session.commit()`` and ``session.rollback()``: how many databases
    and series the session had changed."""

    databases: int
    series: int


class ProviderInfo(TypedDict):
    """One provider of a service, in ``ServiceInfo``."""

    #: The provider's id on the node (``provider.id``).
    id: str
    #: The identity it logged in as.
    identity: str
    #: When it offered the service, epoch milliseconds UTC.
    since_unix_ms: int
    calls_in_flight: int
    calls_served: int
    #: Closing: the node routes it no new calls.
    draining: bool


class ServiceInfo(TypedDict):
    """``conn.services(...)``: a live service of the mesh."""

    #: The protobuf full name, "mesh.trust.Tokenizer".
    name: str
    #: "/services/mesh.trust.Tokenizer".
    path: str
    #: Method names, sorted.
    methods: List[str]
    providers: List[ProviderInfo]


__all__ = [
    "CertificateInfo", "ClusterNode", "Empty", "ExecuteSummary", "Grant", "Identity", "NewCertificate",
    "NodeStatus", "Procedure", "ProviderInfo", "PublishSummary", "Resource", "SeriesInfo",
    "SeriesSpec", "ServiceInfo", "SessionSummary", "SqlColumn", "WriteSummary",
]
