"""Time series over plain Arrow Flight with nothing but stock pyarrow.flight:
the same credentials and TLS as the native API, path and command descriptors,
interval-replace writes, rejections, and ListFlights filtered by rights."""

from __future__ import annotations

import datetime
import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import cli

SERIES = "/home/admin/flight-wind"
UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)


@pytest.fixture(scope="module")
def node(busbar_node):
    cli(busbar_node, "ts", "create", SERIES, "--resolution", "hour", "--unit", "MW",
        "--tz", "Europe/Oslo")
    cli(busbar_node, "user", "add", "viewer", stdin="viewer-password\n")
    return busbar_node


def client_for(node, user: str | None = None, password: str | None = None):
    client = flight.FlightClient(f"grpc+tls://{node.address}",
                                 tls_root_certs=node.admin["ca_pem"].encode())
    cred = node.admin["credential"]
    header = client.authenticate_basic_token(user or cred["user"], password or cred["password"])
    return client, flight.FlightCallOptions(headers=[header])


def table(times, values, flags=None):
    # Naive pyarrow timestamps in microseconds, as many producers write them: UTC.
    return pa.table({
        "utc_time": pa.array([t.replace(tzinfo=None) for t in times], pa.timestamp("us")),
        "flags": pa.array(flags or [0] * len(times), pa.uint32()),
        "value": pa.array(values, pa.float64()),
    })


def put(client, options, descriptor, data: pa.Table) -> dict:
    writer, reader = client.do_put(descriptor, data.schema, options)
    writer.write_table(data)
    writer.done_writing()
    metadata = reader.read()
    writer.close()  # raises the server's error, if the write failed
    return json.loads(metadata.to_pybytes())


def read(client, options, descriptor) -> pa.Table:
    info = client.get_flight_info(descriptor, options)
    assert info.schema.field("utc_time").type == pa.timestamp("ms", tz="UTC")
    return client.do_get(info.endpoints[0].ticket, options).read_all()


def test_put_and_get_round_trip_with_path_and_command_descriptors(node):
    client, options = client_for(node)
    times = [T0 + i * HOUR for i in range(6)]
    summary = put(client, options, flight.FlightDescriptor.for_path(SERIES),
                  table(times, [float(i) for i in range(6)]))
    assert summary["points_written"] == 6
    everything = read(client, options, flight.FlightDescriptor.for_path(*SERIES.strip("/").split("/")))
    assert everything.column("utc_time").to_pylist() == times
    assert everything.column("value").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]

    # A command names an interval [start, end): ISO 8601 with an offset, or epoch ms.
    window = {"path": SERIES, "start": "2026-03-29T03:00:00+02:00",
              "end": int((T0 + 3 * HOUR).timestamp() * 1000)}
    part = read(client, options, flight.FlightDescriptor.for_command(json.dumps(window)))
    assert part.column("utc_time").to_pylist() == [T0 + HOUR, T0 + 2 * HOUR]

    # DoPut with an interval replaces it: the two hours it lacks are deleted.
    replace = {"path": SERIES, "start": T0.isoformat(), "end": (T0 + 3 * HOUR).isoformat()}
    summary = put(client, options, flight.FlightDescriptor.for_command(json.dumps(replace)),
                  table([T0 + HOUR], [10.0], flags=[2]))
    assert (summary["points_written"], summary["points_deleted"]) == (1, 3)
    after = read(client, options, flight.FlightDescriptor.for_path(SERIES))
    assert after.column("value").to_pylist() == [10.0, 3.0, 4.0, 5.0]
    assert after.column("flags").to_pylist() == [2, 0, 0, 0]


def test_bad_writes_are_rejected_whole_naming_the_row(node):
    client, options = client_for(node)
    before = read(client, options, flight.FlightDescriptor.for_path(SERIES))
    unsorted = table([T0 + 5 * HOUR, T0 + 4 * HOUR], [1.0, 2.0])
    with pytest.raises(pa.ArrowException, match="row 2"):
        put(client, options, flight.FlightDescriptor.for_path(SERIES), unsorted)
    off_grid = table([T0 + datetime.timedelta(minutes=30)], [1.0])
    with pytest.raises(pa.ArrowException, match="not on the series' hourly grid"):
        put(client, options, flight.FlightDescriptor.for_path(SERIES), off_grid)
    wrong = pa.table({"time": pa.array([1], pa.int64()), "value": pa.array([1.0])})
    with pytest.raises(pa.ArrowException, match="columns"):
        put(client, options, flight.FlightDescriptor.for_path(SERIES), wrong)
    with pytest.raises(pa.ArrowException, match="not a series"):
        client.get_flight_info(flight.FlightDescriptor.for_command(b"{not json"), options)
    assert read(client, options, flight.FlightDescriptor.for_path(SERIES)).equals(before)


def test_anonymous_callers_list_nothing_and_can_wait_for_the_server(node):
    client = flight.FlightClient(f"grpc+tls://{node.address}",
                                 tls_root_certs=node.admin["ca_pem"].encode())
    client.wait_for_available(timeout=10)  # probes with ListFlights
    assert list(client.list_flights()) == []
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.get_flight_info(flight.FlightDescriptor.for_path(SERIES))
    # A bad token is refused, not taken for no credentials.
    bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer not-a-token")])
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.list_flights(options=bad))


def test_list_flights_shows_only_series_the_caller_may_read(node):
    client, options = client_for(node)
    listed = {info.descriptor.path[0].decode(): info.total_records
              for info in client.list_flights(options=options)}
    assert listed.get(SERIES) == 4
    viewer, viewer_options = client_for(node, "viewer", "viewer-password")
    assert list(viewer.list_flights(options=viewer_options)) == []
    with pytest.raises(pa.ArrowException, match="read"):
        viewer.get_flight_info(flight.FlightDescriptor.for_path(SERIES), viewer_options)
    cli(node, "grant", SERIES, "viewer", "read")
    assert [i.descriptor.path[0].decode() for i in viewer.list_flights(options=viewer_options)] == [SERIES]
    with pytest.raises(pa.ArrowException, match="write"):
        put(viewer, viewer_options, flight.FlightDescriptor.for_path(SERIES), table([T0], [1.0]))
