//! Time series: interval-replace writes, every rejection, time zones and
//! grids, many series in one read, a 10-million-point round trip, the CLI
//! with its file formats, and durability across kill -9.

#[path = "series_checks.rs"]
mod checks;

use crate::harness::{Node, assert_error};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt32Type};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, TimestampNanosecondArray, UInt32Array};
use arrow_schema::DataType;
use busbar_client::{
    Client, ErrorCode, Interval, Resolution, SeriesData, SeriesSpec, flags, points,
};
use checks::{
    HOUR, Q, T0, bad_writes, base64, check_empty_writes, check_half_open, hourly, hours_replaced,
    ipc_batches, quarter_hours, read_by_name, replace_six_to_twelve, rewrite, times,
};
use std::sync::Arc;

fn values(data: &SeriesData) -> Vec<f64> {
    data.batches
        .iter()
        .flat_map(|b| b.column(2).as_primitive::<Float64Type>().values().to_vec())
        .collect()
}

async fn series(client: &Client, path: &str, spec: SeriesSpec) {
    client.create_series(path, &spec, true).await.unwrap();
}

/// A fresh node, and its admin with a new series at `path`.
async fn node_with_series(path: &str, spec: SeriesSpec) -> (Node, Client) {
    let (node, admin) = Node::start_with_admin(&[]).await;
    series(&admin, path, spec).await;
    (node, admin)
}

#[tokio::test]
async fn writes_replace_their_interval_and_reads_are_half_open() {
    let path = "/home/admin/power";
    let (_node, admin) = node_with_series(path, SeriesSpec::new(Resolution::Hour).unit("MW")).await;

    let written = admin
        .write_series(path, Interval::all(), vec![hourly(0, 24, 1.0)])
        .await
        .unwrap();
    assert_eq!(
        (written.points_written, written.start_ms, written.end_ms),
        (24, T0, T0 + 23 * HOUR + 1)
    );

    // Replace [06:00, 12:00) with two points: the other four hours there go.
    replace_six_to_twelve(&admin, path).await;
    let all = admin.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(times(&all), hours_replaced(24));
    assert_eq!(all.info.points, 20);
    assert_eq!(all.info.spec.as_ref().unwrap().unit, "MW");

    // Half-open: [01:00, 03:00) is two points; the end is excluded.
    check_half_open(&admin, path).await;

    // An empty table with an interval deletes that interval; without one,
    // it is an error, not a silent no-op.
    check_empty_writes(&admin, &admin, path).await;

    // Several series in one call come back in request order.
    let other = "/home/admin/price";
    series(
        &admin,
        other,
        SeriesSpec::new(Resolution::Hour).unit("EUR/MWh"),
    )
    .await;
    admin
        .write_series(other, Interval::all(), vec![hourly(0, 3, 50.0)])
        .await
        .unwrap();
    let both = admin
        .read_many_series(&[other, path, other], Interval::all())
        .await
        .unwrap();
    let order: Vec<(&str, usize)> = both
        .iter()
        .map(|d| (d.info.path.as_str(), d.num_points()))
        .collect();
    assert_eq!(order, vec![(other, 3), (path, 17), (other, 3)]);
    assert_eq!(values(&both[0]), vec![50.0; 3]);
}

fn as_i64(value: &serde_json::Value) -> i64 {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("{value} is no integer"))
}

#[tokio::test]
async fn generic_clients_read_arrow_ipc_and_busbars_reads_send_regular_columns_as_rules() {
    let (_node, admin) = Node::start_with_admin(&[]).await;
    let regular = "/home/admin/regular";
    let ragged = "/home/admin/ragged";
    for path in [regular, ragged] {
        series(&admin, path, SeriesSpec::new(Resolution::Hour)).await;
        admin
            .write_series(path, Interval::all(), vec![hourly(0, 24, 1.5)])
            .await
            .unwrap();
    }
    // One point gone and one flagged: neither times nor flags are regular.
    let two = points(vec![T0 + 7 * HOUR], vec![flags::SUSPECT], vec![7.0]).unwrap();
    admin
        .write_series(ragged, T0 + 6 * HOUR..T0 + 9 * HOUR, vec![two])
        .await
        .unwrap();

    // Without a form: the series header, then one Arrow IPC stream, which
    // any Arrow library reads and which holds what Busbar's client reads.
    let messages = read_by_name(&admin, serde_json::json!({"paths": [ragged]})).await;
    assert_eq!(messages[0]["series"]["path"], ragged, "{}", messages[0]);
    let batches = ipc_batches(&messages[1..]);
    let native = admin.read_series(ragged, Interval::all()).await.unwrap();
    assert_eq!(batches, native.batches);
    assert_eq!(native.num_points(), 22);
    let flags_of = |data: &SeriesData| -> Vec<u32> {
        data.batches
            .iter()
            .flat_map(|b| b.column(1).as_primitive::<UInt32Type>().values().to_vec())
            .collect()
    };
    assert_eq!(flags_of(&native).iter().filter(|&&f| f != 0).count(), 1);

    // The columns form: regular times and uniform flags go as rules, so
    // only the values cross; the ragged series sends all three columns.
    let columns = serde_json::json!({"paths": [regular], "form": "POINTS_COLUMNS"});
    let messages = read_by_name(&admin, columns).await;
    assert_eq!(messages.len(), 3, "{messages:?}");
    let header = &messages[1]["columns"];
    assert_eq!(as_i64(&header["rows"]), 24, "{header}");
    assert_eq!(as_i64(&header["times"]["first_ms"]), T0, "{header}");
    assert_eq!(as_i64(&header["times"]["step_ms"]), HOUR, "{header}");
    assert_eq!(as_i64(&header["flags"]), 0, "{header}");
    let sent = base64(&messages[2]["column"]);
    assert_eq!(
        sent,
        [1.5f64; 24]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
    let columns = serde_json::json!({"paths": [ragged], "form": "POINTS_COLUMNS"});
    let messages = read_by_name(&admin, columns).await;
    let widths: Vec<usize> = messages[2..]
        .iter()
        .map(|m| base64(&m["column"]).len())
        .collect();
    assert_eq!(widths, vec![22 * 8, 22 * 4, 22 * 8], "{messages:?}");
    assert_eq!(
        times(&admin.read_series(regular, Interval::all()).await.unwrap()),
        (0..24).map(|h| T0 + h * HOUR).collect::<Vec<_>>()
    );

    // A form the node does not know is refused before anything streams.
    let mut call = admin
        .stream(
            "busbar.v1.TimeSeries/Read",
            Some(serde_json::json!({"paths": [regular], "form": 7})),
        )
        .await
        .unwrap();
    use futures::StreamExt;
    let refused = call.next().await.unwrap();
    assert_error(refused, ErrorCode::InvalidArgument, "bad points form 7");
}

#[tokio::test]
async fn every_bad_write_is_rejected_naming_its_first_bad_row_and_changes_nothing() {
    let path = "/home/admin/load";
    let (_node, admin) = node_with_series(path, SeriesSpec::new(Resolution::Min15)).await;
    admin
        .write_series(path, Interval::all(), vec![quarter_hours()])
        .await
        .unwrap();
    let before = admin.read_series(path, Interval::all()).await.unwrap();

    // Bad rows and wrong schemas (a missing column, a wrong type) as on
    // every store, then more: unsorted named, a row before the interval,
    // nulls.
    let with_null = RecordBatch::try_from_iter([
        (
            "utc_time",
            Arc::new(TimestampNanosecondArray::from(vec![
                Some(T0 * 1_000_000),
                None,
            ])) as ArrayRef,
        ),
        ("flags", Arc::new(UInt32Array::from(vec![0, 0])) as ArrayRef),
        (
            "value",
            Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
        ),
    ])
    .unwrap();
    // A bad row in a later batch of a multi-batch write still writes nothing.
    let later = points(vec![T0 + 10 * Q, T0 + 9 * Q], vec![0, 0], vec![3.0, 3.0]).unwrap();

    for (interval, batches, words) in bad_writes().into_iter().chain([
        (
            Interval::all(),
            rewrite(vec![T0, T0 + 2 * Q, T0 + Q]),
            "sorted",
        ),
        (
            Interval::new(T0, T0 + Q),
            rewrite(vec![T0 - Q]),
            "before the interval's start",
        ),
        (Interval::all(), vec![with_null], "row 2: utc_time is null"),
        (Interval::all(), vec![hourly(0, 1, 3.0), later], "row 3"),
    ]) {
        assert_error(
            admin.write_series(path, interval, batches).await,
            ErrorCode::InvalidArgument,
            words,
        );
    }

    let after = admin.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(
        (times(&after), values(&after)),
        (times(&before), values(&before)),
        "rejected writes changed nothing"
    );

    // Bad definitions and wrong kinds.
    assert_error(
        admin
            .create_series(
                "/home/admin/x",
                &SeriesSpec::new(Resolution::Day).time_zone("Mars/Olympus"),
                false,
            )
            .await,
        ErrorCode::InvalidArgument,
        "unknown time zone",
    );
    assert!(
        admin.get("/home/admin/x").await.is_err(),
        "no resource without its file"
    );
    admin
        .create("/home/admin/room", busbar_client::ResourceKind::Room, false)
        .await
        .unwrap();
    assert_error(
        admin.read_series("/home/admin/room", Interval::all()).await,
        ErrorCode::FailedPrecondition,
        "not a time series",
    );
    assert_error(
        admin
            .read_many_series(&[path, "/home/admin/nothing-here"], Interval::all())
            .await,
        ErrorCode::NotFound,
        "/home/admin/nothing-here does not exist",
    );
}

#[tokio::test]
async fn time_zones_naive_aware_and_daylight_saving_edges() {
    let path = "/home/admin/oslo-daily";
    let oslo = SeriesSpec::new(Resolution::Day).time_zone("Europe/Oslo");
    let (node, admin) = node_with_series(path, oslo).await;
    // Oslo midnights around the spring change (2026-03-29 has 23 hours):
    // 2026-03-28T23:00Z, 2026-03-29T22:00Z, 2026-03-30T22:00Z.
    let midnights = vec![
        1_774_652_400_000,
        1_774_738_800_000,
        1_774_821_600_000,
        1_774_908_000_000,
    ];
    let n = midnights.len();
    admin
        .write_series(
            path,
            Interval::all(),
            vec![points(midnights.clone(), vec![0; n], vec![1.0; n]).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(
        times(&admin.read_series(path, Interval::all()).await.unwrap()),
        midnights
    );
    // 2026-03-29T23:00Z is 01:00 in Oslo: off the daily grid.
    let off = points(vec![1_774_825_200_000], vec![0], vec![1.0]).unwrap();
    assert_error(
        admin.write_series(path, Interval::all(), vec![off]).await,
        ErrorCode::InvalidArgument,
        "not on the series' daily grid in Europe/Oslo",
    );

    // Aware timestamps (any zone, any unit) mean the same instants; naive ones are UTC.
    let utc_path = "/home/admin/utc-hourly";
    series(&admin, utc_path, SeriesSpec::new(Resolution::Hour)).await;
    let nanos = |zone: Option<&str>| {
        let array = TimestampNanosecondArray::from(vec![T0 * 1_000_000, (T0 + HOUR) * 1_000_000]);
        let array = match zone {
            Some(zone) => array.with_timezone(zone),
            None => array,
        };
        RecordBatch::try_from_iter([
            ("utc_time", Arc::new(array) as ArrayRef),
            ("flags", Arc::new(UInt32Array::from(vec![0, 0])) as ArrayRef),
            (
                "value",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
        ])
        .unwrap()
    };
    for zone in [None, Some("America/New_York"), Some("+05:30")] {
        admin
            .write_series(utc_path, Interval::all(), vec![nanos(zone)])
            .await
            .unwrap();
        let back = admin.read_series(utc_path, Interval::all()).await.unwrap();
        assert_eq!(times(&back), vec![T0, T0 + HOUR], "zone {zone:?}");
        let field = back.batches[0].schema().field(0).clone();
        assert_eq!(
            field.data_type(),
            &DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into()))
        );
    }
    // A sub-millisecond timestamp is refused rather than rounded.
    let fraction = RecordBatch::try_from_iter([
        (
            "utc_time",
            Arc::new(TimestampNanosecondArray::from(vec![T0 * 1_000_000 + 1])) as ArrayRef,
        ),
        ("flags", Arc::new(UInt32Array::from(vec![0])) as ArrayRef),
        ("value", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
    ])
    .unwrap();
    assert_error(
        admin
            .write_series(utc_path, Interval::all(), vec![fraction])
            .await,
        ErrorCode::InvalidArgument,
        "fraction of a millisecond",
    );

    // The CLI reads aware and naive times: +01:00 and the same instant in UTC.
    let out = node.cli_ok(&[
        "ts",
        "read",
        utc_path,
        "--start",
        "2026-01-01T01:00:00+01:00",
        "--end",
        "2026-01-01T01:00:00",
    ]);
    assert_eq!(out, "utc_time,flags,value\n2026-01-01T00:00:00Z,0,1\n");
}

#[tokio::test]
async fn ten_million_points_round_trip_exactly_and_survive_kill_9() {
    let path = "/home/admin/big";
    let (mut node, admin) = node_with_series(path, SeriesSpec::new(Resolution::Min1)).await;
    const N: i64 = 10_000_000;
    const BATCH: i64 = 1 << 16;
    let batch_at = |start: i64| {
        let end = (start + BATCH).min(N);
        points(
            (start..end).map(|i| T0 + i * 60_000).collect(),
            (start..end).map(|i| (i % 8) as u32).collect(),
            (start..end).map(|i| i as f64 * 0.5).collect(),
        )
        .unwrap()
    };
    let batches = futures::stream::iter((0..N).step_by(BATCH as usize)).map(batch_at);
    use futures::StreamExt;
    let written = admin
        .write_series_stream(path, Interval::all(), batches)
        .await
        .unwrap();
    assert_eq!(written.points_written, N as u64);

    // Acknowledged means durable: kill -9 and read it all back.
    node.restart();
    let admin = node.admin().await;
    let mut chunks = admin
        .read_series_stream(&[path], Interval::all())
        .await
        .unwrap();
    let mut next = 0i64;
    while let Some(chunk) = chunks.next().await {
        let busbar_client::SeriesChunk::Points(batch) = chunk.unwrap() else {
            continue;
        };
        let t = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let f = batch.column(1).as_primitive::<UInt32Type>();
        let v = batch.column(2).as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            assert_eq!(
                (t.value(i), f.value(i), v.value(i)),
                (T0 + next * 60_000, (next % 8) as u32, next as f64 * 0.5),
                "point {next}"
            );
            next += 1;
        }
    }
    assert_eq!(next, N);
}

#[tokio::test]
async fn the_cli_creates_writes_reads_and_lists_series_in_every_file_format() {
    let node = Node::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| node.cli_ok(args);
    run(&[
        "ts",
        "create",
        "/home/admin/wind",
        "--resolution",
        "hour",
        "--unit",
        "MW",
        "--tz",
        "Europe/Oslo",
    ]);
    let csv = dir.path().join("in.csv");
    std::fs::write(&csv, "utc_time,flags,value\n2026-01-01T00:00:00Z,0,1.5\n2026-01-01T02:00:00+01:00,2,2.5\n2026-01-01T02:00:00,0,NaN\n").unwrap();
    run(&["ts", "write", "/home/admin/wind", csv.to_str().unwrap()]);
    let expected = "utc_time,flags,value\n2026-01-01T00:00:00Z,0,1.5\n2026-01-01T01:00:00Z,2,2.5\n2026-01-01T02:00:00Z,0,NaN\n";
    assert_eq!(run(&["ts", "read", "/home/admin/wind"]), expected);
    // Through each file format and back in through write.
    for name in ["out.arrow", "out.arrows", "out.parquet", "out.csv"] {
        let file = dir.path().join(name);
        run(&[
            "ts",
            "read",
            "/home/admin/wind",
            "--out",
            file.to_str().unwrap(),
        ]);
        run(&[
            "ts",
            "write",
            "/home/admin/wind",
            file.to_str().unwrap(),
            "--start",
            "2026-01-01",
            "--end",
            "2026-01-02",
        ]);
        assert_eq!(run(&["ts", "read", "/home/admin/wind"]), expected, "{name}");
    }
    let listing = run(&["ts", "ls", "/home"]);
    assert!(
        listing.contains("/home/admin/wind")
            && listing.contains("hour")
            && listing.contains("Europe/Oslo")
            && listing.contains("| 3 "),
        "{listing}"
    );
    // Bad input: one clear line, non-zero exit.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "utc_time,value\n2026-01-01T00:00:00Z,x\n").unwrap();
    let out = node
        .cli(&["ts", "write", "/home/admin/wind", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: value \"x\" is not a number"));
    let out = node
        .cli(&["ts", "create", "/home/admin/z", "--resolution", "fortnight"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad resolution"));
}

#[tokio::test]
async fn a_null_value_is_a_missing_point() {
    let (_node, admin) = Node::start_with_admin(&[]).await;
    let path = "/home/admin/gaps";
    admin
        .create_series(path, &SeriesSpec::new(Resolution::Breakpoint), false)
        .await
        .unwrap();
    // pandas and pyarrow spell a missing value as a null.
    let with_gap = RecordBatch::try_from_iter([
        (
            "utc_time",
            Arc::new(TimestampNanosecondArray::from(vec![
                T0 * 1_000_000,
                (T0 + HOUR) * 1_000_000,
            ])) as ArrayRef,
        ),
        ("flags", Arc::new(UInt32Array::from(vec![0, 2])) as ArrayRef),
        (
            "value",
            Arc::new(Float64Array::from(vec![Some(1.0), None])) as ArrayRef,
        ),
    ])
    .unwrap();
    let written = admin
        .write_series(path, Interval::all(), vec![with_gap])
        .await
        .unwrap();
    assert_eq!(written.points_written, 2);
    let back = admin.read_series(path, Interval::all()).await.unwrap();
    let batch = &back.batches[0];
    let flags = batch
        .column(1)
        .as_any()
        .downcast_ref::<UInt32Array>()
        .unwrap();
    let values = batch
        .column(2)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(values.value(0), 1.0);
    assert!(values.value(1).is_nan(), "stored as NaN");
    // MISSING joins the flags the row had (SUSPECT here).
    assert_eq!(
        flags.values().to_vec(),
        vec![0, busbar_client::flags::MISSING | 2]
    );
}
