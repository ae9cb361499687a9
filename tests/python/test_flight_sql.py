"""Flight SQL against a real node with stock clients only: the ADBC Flight SQL
driver (its Go core) and pyarrow.flight, over TLS pinned to the node's CA."""

from __future__ import annotations

import datetime

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import DatabaseOptions

from conftest import cli

DB = "/home/admin/flightshop"
HEADER = "adbc.flight.sql.rpc.call_header.x-busbar-database"


@pytest.fixture(scope="module")
def node(busbar_node):
    cli(busbar_node, "db", "create", DB)
    cli(busbar_node, "sql", DB,
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, "
        "photo BLOB, in_stock BOOLEAN, added TIMESTAMP)")
    cli(busbar_node, "user", "add", "reader", stdin="reader-password\n")
    cli(busbar_node, "grant", DB, "reader", "read")
    return busbar_node


def connect(node, database: str | None = DB, **auth: str):
    kwargs = {DatabaseOptions.TLS_ROOT_CERTS.value: node.admin["ca_pem"]}
    if not auth:
        cred = node.admin["credential"]
        auth = {"username": cred["user"], "password": cred["password"]}
    kwargs.update(auth)
    if database is not None:
        kwargs[HEADER] = database
    # Busbar has no Flight SQL transactions: every statement commits by itself.
    return flightsql.connect(f"grpc+tls://{node.address}", db_kwargs=kwargs, autocommit=True)


def test_parameterized_query_returns_typed_arrow_with_nulls(node):
    added = datetime.datetime(2026, 11, 20, 12, 30, tzinfo=datetime.timezone.utc)
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items (name, price, photo, in_stock, added) VALUES (?, ?, ?, ?, ?)",
                    ("apple", 1.25, b"\x00\xff", True, int(added.timestamp() * 1000)))
        cur.execute("INSERT INTO items (name, price) VALUES (?, ?)", ("pear", None))
        cur.execute("SELECT id, name, price, photo, in_stock, added FROM items "
                    "WHERE price IS NULL OR price < ? ORDER BY id", (2.0,))
        table = cur.fetch_arrow_table()
    assert table.schema.types == [
        pa.int64(), pa.string(), pa.float64(), pa.binary(), pa.bool_(),
        pa.timestamp("ms", tz="UTC"),
    ]
    rows = table.to_pylist()
    assert [r["name"] for r in rows] == ["apple", "pear"]
    assert rows[0]["price"] == 1.25 and rows[0]["photo"] == b"\x00\xff"
    assert rows[0]["in_stock"] is True and rows[0]["added"] == added
    assert rows[1]["price"] is None and rows[1]["photo"] is None and rows[1]["added"] is None


def test_update_reports_rows_and_changes_data(node):
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items (name, price) VALUES ('fig', 3.5), ('kiwi', 4.5)")
        cur.adbc_statement.set_sql_query("UPDATE items SET price = price * 2 WHERE price > 3")
        assert cur.adbc_statement.execute_update() == 2
        cur.execute("SELECT name, price FROM items WHERE price > 3 ORDER BY name")
        assert cur.fetchall() == [("fig", 7.0), ("kiwi", 9.0)]
        cur.execute("SELECT count(*) AS n, max(name) AS last FROM items")
        table = cur.fetch_arrow_table()
    assert table.schema.types == [pa.int64(), pa.string()]


def test_read_rights_refuse_a_write_and_change_nothing(node):
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM items")
        before = cur.fetchone()[0]
    with connect(node, username="reader", password="reader-password") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM items")
            assert cur.fetchone()[0] == before
            with pytest.raises(flightsql.Error) as refused:
                cur.execute("WITH doomed AS (SELECT 1) DELETE FROM items")
            assert "read" in str(refused.value)
            with pytest.raises(flightsql.Error):
                cur.execute("INSERT INTO items (name) VALUES (?)", ("sneaky",))
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchone()[0] == before


def test_missing_database_header_is_a_clear_error(node):
    with connect(node, database=None) as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as missing:
            cur.execute("SELECT 1")
    assert "x-busbar-database" in str(missing.value)


def test_unknown_database_is_not_found(node):
    with connect(node, database="/home/admin/nope") as conn, conn.cursor() as cur:
        with pytest.raises(flightsql.Error) as unknown:
            cur.execute("SELECT 1")
    assert "does not exist" in str(unknown.value)


def test_bad_credentials_are_refused(node):
    with pytest.raises(flightsql.Error) as refused:
        with connect(node, username="admin", password="wrong") as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert "password" in str(refused.value).lower()
    with pytest.raises(flightsql.Error):
        with connect(node, **{DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer bbt_nope"}) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")


def test_api_token_in_the_authorization_header(node):
    cli(node, "sql", DB, "INSERT INTO items (name) VALUES ('token-row')")
    token = cli(node, "token", "create", "flight-test").strip()
    with connect(node, **{DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"}) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM items WHERE name = ?", ("token-row",))
            assert cur.fetchall() == [("token-row",)]


def test_catalog_commands(node):
    with connect(node) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [t["table_name"] for c in objects for s in c["catalog_db_schemas"]
                  for t in s["db_schema_tables"]]
        assert "items" in tables
        schema = conn.adbc_get_table_schema("items")
        assert schema.field("price").type == pa.float64()
        assert conn.adbc_get_info()["vendor_name"] == "Busbar"


def test_pyarrow_flight_handshake_and_plain_flight_fallback(node):
    client = flight.FlightClient(f"grpc+tls://{node.address}",
                                 tls_root_certs=node.admin["ca_pem"].encode())
    cred = node.admin["credential"]
    header = client.authenticate_basic_token(cred["user"], cred["password"])
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer ")
    options = flight.FlightCallOptions(headers=[header])
    assert list(client.list_flights(options=options)) == []
    with pytest.raises(pa.ArrowException, match="does not exist|no resource"):
        client.get_flight_info(flight.FlightDescriptor.for_path("/home/admin/series"), options)
    # Without credentials ListFlights lists nothing; other calls are refused.
    assert list(client.list_flights()) == []
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(flight.FlightDescriptor.for_path("/home/admin/series"))
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token(cred["user"], "wrong")


def test_the_sql_sandbox_holds_on_every_flight_sql_path(node):
    """ATTACH of the node's metadata store, VACUUM INTO a file and transaction
    control are refused whether they come as a query, a prepared statement or
    an update, for an admin as for anyone (docs/security.md)."""
    meta = node.data_dir / "meta.db"
    outside = node.data_dir.parent / "flight-stolen.db"
    attacks = [f"ATTACH DATABASE '{meta}' AS m", f"VACUUM INTO '{outside}'", "BEGIN"]
    with connect(node) as conn, conn.cursor() as cur:
        for sql in attacks:
            with pytest.raises(flightsql.Error, match="sandbox"):
                cur.execute(sql)  # a query (or, for ADBC, an update: no result columns)
            with pytest.raises(flightsql.Error, match="sandbox"):
                cur.adbc_statement.set_sql_query(sql)
                cur.adbc_statement.execute_update()
            with pytest.raises(flightsql.Error, match="sandbox"):
                cur.adbc_statement.set_sql_query(sql)
                cur.adbc_statement.prepare()
        with pytest.raises(flightsql.Error, match="sandbox"):
            cur.execute("SELECT file FROM pragma_database_list")
        # The connection still works, and sees no attached database.
        cur.execute("SELECT count(*) FROM items")
        assert cur.fetchone()[0] >= 0
        with pytest.raises(flightsql.Error):
            cur.execute("SELECT * FROM m.secrets")
    assert not outside.exists()
