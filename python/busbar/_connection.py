"""The connection, written once for both faces.

Every method here hands its arguments to the Rust core, which returns the
result (blocking face) or an awaitable (asyncio face); ``_then`` applies any
wrapping after the result is there. ``busbar.Connection`` and
``busbar.aio.Connection`` only add what a face needs on top: context
managers, how streams are iterated and how room handlers run.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Optional, Sequence, Union

from . import _core, _mesh, _transport
from ._sql import Database
from ._timeseries import TimeSeries
from .errors import InvalidArgument

_TARGET_KEYS = (
    "config_path", "config_json", "address", "addresses", "ca", "fingerprint", "server_name",
    "user", "password", "token", "key_name", "private_key", "certificate",
    "certificate_key", "timeout",
    "connect_timeout", "connections",
)


def _target(**given: Any) -> Dict[str, Any]:
    return {key: given.get(key) for key in _TARGET_KEYS}


def _one_address(address: str, scheme: str) -> str:
    if not isinstance(address, str) or not address:
        raise InvalidArgument(f"bad address {address!r}: use host:port")
    if "://" not in address:
        return f"{scheme}://{address}"
    if not address.startswith(f"{scheme}://"):
        other = "with_tls" if scheme == "http" else "insecure"
        raise InvalidArgument(f"bad address {address!r} for this constructor: "
                              f"use {scheme}://host:port or host:port (or Connection.{other})")
    return address


def _address(address: Any, scheme: str) -> Dict[str, Any]:
    """``address`` and ``addresses`` for the core: one node, or a cluster's
    nodes in the order to try them (the client moves to the next when the
    one it uses is lost)."""
    if isinstance(address, (list, tuple)):
        if not address:
            raise InvalidArgument("no address: give host:port, or a list of a cluster's nodes")
        first, *more = [_one_address(one, scheme) for one in address]
        return {"address": first, "addresses": more}
    return {"address": _one_address(address, scheme)}


def _pem(ca: Any) -> Optional[str]:
    """A CA (or a client certificate or key) given as PEM text (str or
    bytes) or as the path of a PEM file."""
    if isinstance(ca, (bytes, bytearray)):
        try:
            ca = bytes(ca).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgument("ca bytes must be PEM text (ASCII); DER is not read") from None
    if isinstance(ca, os.PathLike):
        ca = os.fspath(ca)
    if ca is None or "-----BEGIN" in ca:
        return ca
    try:
        with open(ca, encoding="ascii") as file:
            return file.read()
    except OSError as error:
        raise InvalidArgument(f"cannot read the PEM file {ca!r}: {error}; pass the PEM "
                              "text or the path of a PEM file") from None


class _ConnectionBase:
    """Methods shared by both faces. See ``busbar.Connection`` for the docs."""

    _ASYNC = False
    _CALL: Any = None
    _SUBSCRIPTION: Any = None
    _SESSION: Any = None
    _PROVIDER: Any = None
    _TRANSPORT: Any = None

    def __init__(self, core: Any) -> None:
        if not isinstance(core, _core.Core):
            raise InvalidArgument("make a connection with Connection.from_config, "
                                  "Connection.insecure or Connection.with_tls")
        self._core = core

    # --- constructors -----------------------------------------------------

    @classmethod
    def _then(cls, result: Any, wrap: Callable[[Any], Any]) -> Any:
        return wrap(result)

    @classmethod
    def _after(cls, first: Any, then: Callable[[], Any]) -> Any:
        """``then()`` once ``first`` (a call's result) is done."""
        return then()

    @classmethod
    def _connect(cls, target: Dict[str, Any]) -> Any:
        return cls._then(_core.connect(cls._ASYNC, target), cls)

    @classmethod
    def from_config(cls, config: Any, *, timeout: Optional[float] = None,
                    connect_timeout: Optional[float] = None,
                    connections: Optional[int] = None) -> Any:
        """Connects with a client config: a path to the JSON file that
        ``busbar serve`` (``admin.json``) or ``busbar identity new`` writes, or
        the same content as a dict."""
        if isinstance(config, dict):
            given = {"config_json": json.dumps(config)}
        elif isinstance(config, (str, os.PathLike)):
            given = {"config_path": os.fspath(config)}
        else:
            raise InvalidArgument("config is a path to a client config file or a dict")
        return cls._connect(_target(**given, timeout=timeout, connect_timeout=connect_timeout,
                                    connections=connections))

    @classmethod
    def insecure(cls, address: Union[str, Sequence[str]], *, user: Optional[str] = None,
                 password: Optional[str] = None, token: Optional[str] = None,
                 key_name: Optional[str] = None, private_key: Optional[str] = None,
                 timeout: Optional[float] = None, connect_timeout: Optional[float] = None,
                 connections: Optional[int] = None) -> Any:
        """Connects in plaintext to a node started with ``--insecure``."""
        return cls._connect(_target(
            **_address(address, "http"), user=user, password=password, token=token,
            key_name=key_name, private_key=private_key, timeout=timeout,
            connect_timeout=connect_timeout, connections=connections))

    @classmethod
    def with_tls(cls, address: Union[str, Sequence[str]], ca: Any = None, *,
                 fingerprint: Optional[str] = None, server_name: Optional[str] = None,
                 user: Optional[str] = None, password: Optional[str] = None,
                 token: Optional[str] = None, key_name: Optional[str] = None,
                 private_key: Optional[str] = None, certificate: Any = None,
                 certificate_key: Any = None, timeout: Optional[float] = None,
                 connect_timeout: Optional[float] = None,
                 connections: Optional[int] = None) -> Any:
        """Connects over TLS (to ``address``, ``host:port``, or to the first
        that answers of a list of a cluster's nodes, moving to the next when
        it is lost), trusting ``ca`` (PEM text as str or bytes, or
        the path of a PEM file; may be given by position) and/or the server
        certificate ``fingerprint`` (hex SHA-256).

        ``certificate`` and ``certificate_key`` (PEM, like ``ca``) present a
        client certificate the node's CA issued: alone they log in as its
        identity; beside another credential they are only presented, for a
        node that requires certificates."""
        return cls._connect(_target(
            **_address(address, "https"), ca=_pem(ca), fingerprint=fingerprint,
            server_name=server_name, user=user, password=password, token=token,
            key_name=key_name, private_key=private_key, certificate=_pem(certificate),
            certificate_key=_pem(certificate_key), timeout=timeout,
            connect_timeout=connect_timeout, connections=connections))

    # --- the connection ---------------------------------------------------

    @property
    def address(self) -> str:
        """The address this connection dials."""
        return self._core.address

    @property
    def closed(self) -> bool:
        return self._core.closed

    def with_idempotency_key(self, key: str) -> Any:
        """The same connection, its writes (SQL statements, procedures,
        transport pushes) carrying ``key`` as their idempotency key instead of
        one made per call: keep the key of a write to send it again after a
        restart, and a cluster applies it once, answering every send with the
        first outcome (docs/cluster.md). ``key``: 1 to 128 letters, digits,
        ``-`` and ``_``; a new one for each write."""
        return type(self)(self._core.with_idempotency_key(key))

    def close(self) -> None:
        """Closes the connection; later calls raise FailedPrecondition."""
        self._core.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.address
        return f"<{type(self).__module__}.{type(self).__name__} {state}>"

    def status(self, *, timeout: Optional[float] = None) -> Any:
        """The node's version, uptime, store, bus and TLS state."""
        return self._core.status(timeout)

    def whoami(self, *, timeout: Optional[float] = None) -> Any:
        """The identity this connection is logged in as."""
        return self._core.whoami(timeout)

    # --- calls ------------------------------------------------------------

    def call(self, method: str, request: Optional[Dict[str, Any]] = None, *,
             timeout: Optional[float] = None, trace_id: Optional[str] = None,
             metadata: Optional[Dict[str, str]] = None) -> Any:
        """Calls the unary method ``method`` ("package.Service/Method") with a
        dict; returns the reply as a dict (protocol field names). ``trace_id``
        and ``metadata`` (``x-`` keys) travel with the call (a mesh handler
        sees them in ``busbar.context()``)."""
        return self._core.call(method, request, timeout, False, trace_id, metadata)

    def stream(self, method: str, request: Optional[Dict[str, Any]] = None, *,
               timeout: Optional[float] = None, trace_id: Optional[str] = None,
               metadata: Optional[Dict[str, str]] = None) -> Any:
        """Starts a server-, client- or bidi-streaming call; returns a Call.
        ``request`` is the first message (required for server streaming)."""
        return self._then(self._core.call(method, request, timeout, True, trace_id, metadata),
                          self._CALL)

    # --- mesh -------------------------------------------------------------

    def provide(self, implementation: Any, *, concurrency: Optional[int] = None,
                timeout: Optional[float] = None) -> Any:
        """Offers, through the node, every ``@busbar.interface`` the
        implementation's class derives from; returns a Provider once the node
        accepted the offer, which serves calls in the background until it is
        closed. At most ``concurrency`` calls (default 64) run at once: plain
        handlers on a pool of that many threads, ``async def`` ones (asyncio
        face only) as tasks on the event loop. ``timeout`` bounds the offer."""
        offered = _mesh.offer(implementation, self._ASYNC)
        calls = _mesh.check_concurrency(concurrency)
        opening = self._core.provide(offered.services, offered.descriptors, calls, timeout)
        return self._then(opening, lambda core: self._PROVIDER(core, offered, calls))

    def remote(self, interface: Any, *, timeout: Optional[float] = None,
               trace_id: Optional[str] = None,
               metadata: Optional[Dict[str, str]] = None) -> Any:
        """A reference to the service ``interface`` (a ``@busbar.interface``
        class) whose methods call it through the node, by name, with
        ``timeout`` as each call's deadline and ``trace_id`` and ``metadata``
        (``x-`` keys) sent with each. It is an instance of a subclass of
        ``interface``; with the asyncio face its methods are awaited (and
        streaming ones are async iterators)."""
        return _mesh.remote(self, interface, timeout, self._ASYNC, trace_id, metadata)

    def services(self, path: str = "", *, timeout: Optional[float] = None) -> Any:
        """Live services at or below ``path`` (default ``/services``) with
        their methods and providers, as this identity may read them."""
        return self._core.services(path, timeout)

    # --- transport sessions -----------------------------------------------

    def transport(self, session_id: str, metadata: Optional[Dict[str, str]] = None, *,
                  timeout: Optional[float] = None) -> Any:
        """Opens the transport session ``session_id`` (1 to 128 letters,
        digits, '.', '_', '-'), creating it when missing with ``metadata``
        (a dict of str to str), or joins it; returns a TransportSession
        with ``push``, ``pop``, ``pop_message``, ``peek`` and ``release``.
        Leaving it (``with``) does not release it: ``release()`` is explicit."""
        opening = self._core.transport_open(session_id, metadata, timeout)
        return self._then(opening, lambda opened: self._TRANSPORT(self, opened))

    # --- resources --------------------------------------------------------

    def ls(self, path: str, *, recursive: bool = False, timeout: Optional[float] = None) -> Any:
        """The children of a folder (everything below it with ``recursive``)."""
        return self._core.ls(path, recursive, timeout)

    def get(self, path: str, *, timeout: Optional[float] = None) -> Any:
        """The resource at ``path``."""
        return self._core.get(path, timeout)

    def create(self, path: str, kind: str, *, parents: bool = False, exist_ok: bool = False,
               timeout: Optional[float] = None) -> Any:
        """Creates a "folder", "room", "wire" or "database" (missing folders
        too with ``parents``). With ``exist_ok`` an existing resource of that
        kind is returned instead of raising AlreadyExists (one of another
        kind still raises)."""
        return self._core.create(path, kind, parents, exist_ok, timeout)

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False,
              timeout: Optional[float] = None) -> Any:
        """Creates a folder (``parents=True, exist_ok=True`` is ``mkdir -p``)."""
        return self.create(path, "folder", parents=parents, exist_ok=exist_ok, timeout=timeout)

    def rm(self, path: str, *, recursive: bool = False, timeout: Optional[float] = None) -> Any:
        """Deletes a resource (a non-empty folder needs ``recursive``); returns how many."""
        return self._core.rm(path, recursive, timeout)

    def mv(self, source: str, destination: str, *, timeout: Optional[float] = None) -> Any:
        """Moves or renames a resource."""
        return self._core.mv(source, destination, timeout)

    def grant(self, path: str, principal: str, right: str, *,
              timeout: Optional[float] = None) -> Any:
        """Grants "read", "write" or "admin" on ``path`` to an identity or
        "group:<name>"; returns the grants set on ``path``."""
        return self._core.grant(path, principal, right, timeout)

    def revoke(self, path: str, principal: str, *, timeout: Optional[float] = None) -> Any:
        """Removes the grant set on ``path`` for ``principal``."""
        return self._core.revoke(path, principal, timeout)

    def grants(self, path: str, *, effective: bool = False,
               timeout: Optional[float] = None) -> Any:
        """Grants set on ``path`` (with ``effective``, inherited ones too)."""
        return self._core.grants(path, effective, timeout)

    # --- identities -------------------------------------------------------

    def create_user(self, name: str, password: str, *, admin: bool = False,
                    timeout: Optional[float] = None) -> Any:
        """Creates a password identity (admin only)."""
        return self._core.create_user(name, password, admin, timeout)

    def new_certificate(self, name: str, *, days: Optional[int] = None, create: bool = False,
                        admin: bool = False, timeout: Optional[float] = None) -> Any:
        """A client certificate for ``name`` from the node's CA (admin of /
        only), over a key pair made in this process: a dict with
        ``certificate_pem``, ``private_key_pem``, ``ca_pem``, ``fingerprint``
        and ``expires_ms``. Pass the PEMs to ``with_tls(certificate=,
        certificate_key=)``. ``create`` makes the CERTIFICATE identity (with
        ``admin`` on / or not); otherwise the identity exists (a renewal).
        ``days`` defaults to 90 (at most 3650)."""
        if days is not None and (not isinstance(days, int) or isinstance(days, bool)
                                 or not 1 <= days <= 3650):
            raise InvalidArgument(f"bad days {days!r}: use a whole number from 1 to 3650")
        return self._core.new_certificate(name, days or 0, create, admin, timeout)

    def certificates(self, identity: str, *, timeout: Optional[float] = None) -> Any:
        """The client certificates issued to ``identity`` (admin of / only)."""
        return self._core.certificates(identity, timeout)

    def revoke_certificate(self, fingerprint: str, *, timeout: Optional[float] = None) -> None:
        """Revokes a client certificate by its hex SHA-256 fingerprint: the
        node refuses it in every handshake from now on and its sessions end."""
        return self._core.revoke_certificate(fingerprint, timeout)

    def create_token(self, name: str, *, ttl: Optional[float] = None,
                     timeout: Optional[float] = None) -> Any:
        """Creates an API token for this identity; returns its secret (shown once)."""
        if ttl is not None and not (isinstance(ttl, (int, float)) and ttl > 0):
            raise InvalidArgument(f"bad ttl {ttl!r}: use a positive number of seconds")
        ttl_seconds = None if ttl is None else max(1, int(ttl))
        return self._core.create_token(name, ttl_seconds, timeout)

    # --- events and data --------------------------------------------------

    def emit(self, room: str, event: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Emits ``event`` to every member of ``room`` without joining; returns
        how many members it reached."""
        return self._core.emit(room, event, args, timeout)

    def wire(self, path: str) -> "Wire":
        return Wire(self, path)

    def sql(self, database: str) -> Database:
        return Database(self, database)

    @property
    def timeseries(self) -> TimeSeries:
        """Time series: ``read``, ``write``, ``create``, ``describe``."""
        return TimeSeries(self)

    def session(self, *, timeout: Optional[float] = None) -> Any:
        """Opens a data session: use it as a context manager; its ``sql`` and
        ``timeseries`` calls see its own changes, which others see only
        after ``commit()``. Leaving without commit rolls it back."""
        return self._then(self._core.session(timeout),
                          lambda core: self._SESSION(core, type(self)))


class Wire:
    """A wire at ``path``: ``subscribe()`` to receive byte chunks,
    ``publish(chunks)`` to send them."""

    def __init__(self, connection: _ConnectionBase, path: str) -> None:
        self.connection = connection
        self.path = path

    def __repr__(self) -> str:
        return f"<busbar.Wire {self.path}>"

    def subscribe(self, *, create: bool = False, resume: bool = False,
                  timeout: Optional[float] = None) -> Any:
        """Subscribes; with ``create`` the wire is made first unless it exists
        (for code that owns its resources). With ``resume`` the subscription
        is opened again when its connection is lost (on the next of the
        connection's addresses, or the same node back), and its
        ``resubscribed`` count says how often chunks may have been missed."""
        conn = self.connection

        def subscribed() -> Any:
            return conn._then(conn._core.open("wire", self.path, timeout, resume),
                              conn._SUBSCRIPTION)

        if not create:
            return subscribed()
        made = conn.create(self.path, "wire", exist_ok=True, timeout=timeout)
        return conn._after(made, subscribed)

    def publish(self, chunks: Any, *, timeout: Optional[float] = None) -> Any:
        """Sends byte chunks (an iterable of bytes-likes, or one bytes-like
        as a single chunk); returns the summary, whose ``unheard_chunks``
        counts chunks no subscriber was there to receive."""
        if isinstance(chunks, (bytes, bytearray, memoryview)):
            chunks = [chunks]
        elif isinstance(chunks, str):
            raise InvalidArgument("a wire carries bytes: encode the text (text.encode())")
        publisher = self.connection._core.publisher(self.path, timeout)
        return self.connection._publish(publisher, chunks)  # type: ignore[attr-defined]
