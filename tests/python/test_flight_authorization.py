"""The authorization table of docs/security.md over Arrow Flight and Flight
SQL: every FlightService method, and every Flight SQL command the node
serves, called by an identity without rights (eve) on the admin's database
and series, is refused before it does anything, with the same message
whether the resource exists or not; nothing changes. The methods open to
every identity are listed with what they answer."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import cli

DB = "/home/admin/fa-db"
SERIES = "/home/admin/fa-series"
MISSING_DB = "/home/admin/fa-no-db"
MISSING_SERIES = "/home/admin/fa-no-series"
HEADER = "x-busbar-database"

#: The FlightService methods (arrow's Flight.proto), each covered below.
FLIGHT_METHODS = {"Handshake", "ListFlights", "GetFlightInfo", "PollFlightInfo", "GetSchema",
                  "DoGet", "DoPut", "DoExchange", "DoAction", "ListActions"}


def varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out += bytes([byte | 0x80])
        else:
            return out + bytes([byte])


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def sql_any(name: str, body: bytes = b"") -> bytes:
    """A Flight SQL command packed in google.protobuf.Any, as clients send it."""
    url = f"type.googleapis.com/arrow.flight.protocol.sql.{name}".encode()
    return field(1, url) + field(2, body)


@pytest.fixture(scope="module")
def node(busbar_node):
    cli(busbar_node, "db", "create", DB)
    cli(busbar_node, "sql", DB, "CREATE TABLE t (x INTEGER)")
    cli(busbar_node, "sql", DB, "INSERT INTO t VALUES (1)")
    cli(busbar_node, "ts", "create", SERIES, "--resolution", "hour")
    cli(busbar_node, "user", "add", "eve", stdin="eve-password\n")
    return busbar_node


def options_headers(client) -> list:
    """eve's bearer header, as (name, value) text."""
    name, value = client.authenticate_basic_token("eve", "eve-password")
    return [(name.decode(), value.decode())]


def as_eve(node, database: str | None = None):
    client = flight.FlightClient(f"grpc+tls://{node.address}",
                                 tls_root_certs=node.admin["ca_pem"].encode())
    headers = [client.authenticate_basic_token("eve", "eve-password")]
    if database is not None:
        headers.append((HEADER.encode(), database.encode()))
    return client, flight.FlightCallOptions(headers=headers)


def points() -> pa.Table:
    return pa.table({"utc_time": pa.array([0], pa.timestamp("ms", tz="UTC")),
                     "flags": pa.array([0], pa.uint32()), "value": [1.0]})


def put(client, options, descriptor, table):
    writer, reader = client.do_put(descriptor, table.schema, options)
    writer.write_table(table)
    writer.done_writing()
    reader.read()
    writer.close()


def statement_ticket(database: str) -> bytes:
    handle = json.dumps({"database": database, "sql": "SELECT x FROM t", "positional": [],
                         "named": [], "columns": [["x", "Int64"]]}).encode()
    return sql_any("TicketStatementQuery", field(1, handle))


#: What eve tries, per method: (method, call(client, options, target)).
SQL_CASES = [
    ("GetFlightInfo StatementQuery", lambda c, o, t: c.get_flight_info(
        flight.FlightDescriptor.for_command(sql_any("CommandStatementQuery",
                                                    field(1, b"SELECT x FROM t"))), o)),
    ("GetSchema StatementQuery", lambda c, o, t: c.get_schema(
        flight.FlightDescriptor.for_command(sql_any("CommandStatementQuery",
                                                    field(1, b"SELECT x FROM t"))), o)),
    ("GetFlightInfo GetTables", lambda c, o, t: c.get_flight_info(
        flight.FlightDescriptor.for_command(sql_any("CommandGetTables")), o)),
    ("DoGet TicketStatementQuery", lambda c, o, t: c.do_get(
        flight.Ticket(statement_ticket(t)), o).read_all()),
    ("DoGet GetTables", lambda c, o, t: c.do_get(
        flight.Ticket(sql_any("CommandGetTables")), o).read_all()),
    # SqlInfo says whether the named database is read-only for the caller.
    ("DoGet GetSqlInfo", lambda c, o, t: c.do_get(
        flight.Ticket(sql_any("CommandGetSqlInfo")), o).read_all()),
    ("DoPut StatementUpdate", lambda c, o, t: put(
        c, o, flight.FlightDescriptor.for_command(
            sql_any("CommandStatementUpdate", field(1, b"DELETE FROM t"))),
        pa.table({"unused": pa.array([], pa.int64())}))),
    ("DoAction CreatePreparedStatement", lambda c, o, t: list(c.do_action(
        flight.Action("CreatePreparedStatement",
                      sql_any("ActionCreatePreparedStatementRequest",
                              field(1, b"DELETE FROM t"))), o))),
]

SERIES_CASES = [
    ("GetFlightInfo path", lambda c, o, t: c.get_flight_info(
        flight.FlightDescriptor.for_path(t), o)),
    ("GetSchema path", lambda c, o, t: c.get_schema(flight.FlightDescriptor.for_path(t), o)),
    ("DoGet series ticket", lambda c, o, t: c.do_get(
        flight.Ticket(json.dumps({"path": t, "start": None, "end": None}).encode()),
        o).read_all()),
    ("DoPut path", lambda c, o, t: put(c, o, flight.FlightDescriptor.for_path(t), points())),
]


def refusal(call) -> str:
    # pyarrow raises FlightUnauthorizedError for most calls and a plain
    # OSError carrying the same status for GetSchema.
    with pytest.raises((OSError, flight.FlightError)) as refused:
        call()
    said = str(refused.value)
    assert "Flight returned unauthorized error" in said, said
    # The node's message, without the client's transport context.
    return said.split(". gRPC client debug context")[0].split(". Detail:")[0]


@pytest.mark.parametrize("name,call", SQL_CASES, ids=[c[0] for c in SQL_CASES])
def test_flight_sql_refuses_eve_alike_for_existing_and_missing_databases(node, name, call):
    client, existing = as_eve(node, DB)
    _, missing = as_eve(node, MISSING_DB)
    said = refusal(lambda: call(client, existing, DB))
    said_missing = refusal(lambda: call(client, missing, MISSING_DB))
    assert said.replace(DB, "<db>") == said_missing.replace(MISSING_DB, "<db>"), name


@pytest.mark.parametrize("name,call", SERIES_CASES, ids=[c[0] for c in SERIES_CASES])
def test_flight_series_refuses_eve_alike_for_existing_and_missing_series(node, name, call):
    client, options = as_eve(node)
    said = refusal(lambda: call(client, options, SERIES))
    said_missing = refusal(lambda: call(client, options, MISSING_SERIES))
    assert said.replace(SERIES, "<s>") == said_missing.replace(MISSING_SERIES, "<s>"), name


def test_the_open_flight_methods_reveal_nothing_and_every_method_is_covered(node):
    client, options = as_eve(node)
    # Open: ListFlights lists only what eve may read; ListActions and
    # Handshake (done in as_eve) say nothing about resources.
    assert [f.descriptor.path for f in client.list_flights(options=options)] == []
    assert {a.type for a in client.list_actions(options)} >= {"CreatePreparedStatement"}
    # Catalog commands that name no table answer constants (the one catalog
    # and schema, the table types) without touching a database: the same for
    # an existing and a missing one.
    for command in ("CommandGetCatalogs", "CommandGetDbSchemas", "CommandGetTableTypes"):
        answers = []
        for database in (DB, MISSING_DB):
            c, o = as_eve(node, database)
            info = c.get_flight_info(flight.FlightDescriptor.for_command(sql_any(command)), o)
            answers.append(c.do_get(info.endpoints[0].ticket, o).read_all())
        assert answers[0].equals(answers[1]), command
        assert "fa-db" not in str(answers[0].to_pylist()), command
    # Not served: PollFlightInfo (pyarrow has no call for it: raw gRPC) and
    # DoExchange.
    import grpc

    creds = grpc.ssl_channel_credentials(root_certificates=node.admin["ca_pem"].encode())
    target = [("grpc.ssl_target_name_override", node.admin["server_name"])]
    token = dict(options_headers(client))
    with grpc.secure_channel(node.address, creds, options=target) as channel:
        poll = channel.unary_unary("/arrow.flight.protocol.FlightService/PollFlightInfo")
        with pytest.raises(grpc.RpcError) as refused:
            poll(field(2, SERIES.encode()), metadata=list(token.items()), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(pa.ArrowNotImplementedError):
        writer, reader = client.do_exchange(flight.FlightDescriptor.for_path(SERIES), options)
        writer.begin(points().schema)
        writer.write_table(points())
        writer.done_writing()
        reader.read_all()
    covered = {"Handshake", "ListFlights", "ListActions", "PollFlightInfo", "DoExchange"}
    covered |= {name.split()[0] for name, _ in SQL_CASES + SERIES_CASES}
    assert covered == FLIGHT_METHODS
    # Nothing eve tried changed anything.
    assert cli(node, "sql", DB, "SELECT count(*) AS n FROM t").split()[-1] == "1"
    assert cli(node, "ts", "read", SERIES).strip().splitlines() == ["utc_time,flags,value"]
