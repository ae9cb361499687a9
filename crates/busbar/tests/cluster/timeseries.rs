//! Time series on cluster nodes: stored in the shared PostgreSQL, written
//! through one node and read through another with the same points, the
//! same Arrow and the same semantics as on one node (interval replace,
//! half-open reads, sessions, rejected writes changing nothing).

#[path = "../e2e/series_checks.rs"]
mod checks;

use crate::harness::{assert_error, assert_unordered_points_refused, points_in};
use crate::{Cluster, collected};
use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt32Array};
use busbar_client::{Client, ErrorCode, Interval, Resolution, SeriesSpec, flags, points};
use checks::{
    HOUR, Q, T0, bad_writes, check_empty_writes, check_half_open, hourly, hours_replaced,
    ipc_batches, quarter_hours, read_by_name, replace_six_to_twelve, rows, times,
};
use std::sync::Arc;

/// A cluster of two nodes and the admin on each, with a new series at
/// `path` made through the first.
async fn two_nodes_with_series(path: &str, spec: SeriesSpec) -> (Cluster, Client, Client) {
    let cluster = Cluster::start(2);
    let (a, b) = (cluster.admin_on(0).await, cluster.admin_on(1).await);
    a.create_series(path, &spec, false).await.unwrap();
    (cluster, a, b)
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn timeseries_written_on_one_node_read_on_another_replace_intervals_half_open() {
    let path = "/home/admin/power";
    let (_cluster, a, b) =
        two_nodes_with_series(path, SeriesSpec::new(Resolution::Hour).unit("MW")).await;
    // The definition is the cluster's: B knows it, and exist_ok agrees.
    b.ensure_series(path, &SeriesSpec::new(Resolution::Hour).unit("MW"), false)
        .await
        .unwrap();
    assert_error(
        b.ensure_series(path, &SeriesSpec::new(Resolution::Day), false)
            .await,
        ErrorCode::AlreadyExists,
        "another definition",
    );

    // More points than one batch holds, a missing value and flags.
    let many = 100_000i64;
    let all_times: Vec<i64> = (0..many).map(|h| T0 + h * HOUR).collect();
    let values: Vec<Option<f64>> = (0..many)
        .map(|i| (i != 5).then_some(i as f64 * 0.5))
        .collect();
    let flag_column: Vec<u32> = (0..many).map(|i| (i % 7 == 0) as u32 * 2).collect();
    let batch = RecordBatch::try_from_iter([
        (
            "utc_time",
            Arc::new(
                arrow_array::TimestampMillisecondArray::from(all_times.clone())
                    .with_timezone("UTC"),
            ) as ArrayRef,
        ),
        (
            "flags",
            Arc::new(UInt32Array::from(flag_column)) as ArrayRef,
        ),
        ("value", Arc::new(Float64Array::from(values)) as ArrayRef),
    ])
    .unwrap();
    let written = a
        .write_series(path, Interval::all(), vec![batch])
        .await
        .unwrap();
    assert_eq!(
        (written.points_written, written.start_ms, written.end_ms),
        (many as u64, T0, T0 + (many - 1) * HOUR + 1)
    );

    // Read through the other node: the same points, the same extent.
    let on_a = a.read_series(path, Interval::all()).await.unwrap();
    let on_b = b.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(on_b.num_points(), many as usize);
    assert_eq!(rows(&on_a.batches), rows(&on_b.batches));
    assert_eq!(times(&on_b), all_times);
    assert_eq!(on_b.info.points, many as u64);
    assert_eq!(
        (on_b.info.first_ms, on_b.info.last_ms),
        (Some(T0), Some(T0 + (many - 1) * HOUR))
    );
    let missing = rows(&on_b.batches)[5];
    assert!(f64::from_bits(missing.2).is_nan(), "{missing:?}");
    assert_eq!(missing.1 & flags::MISSING, flags::MISSING);
    let described = b.describe_series(path).await.unwrap();
    assert_eq!(described.points, many as u64);
    assert_eq!(described.spec.unwrap().unit, "MW");

    // The Arrow IPC form through B decodes to what the columns form gave.
    let messages = read_by_name(&b, serde_json::json!({"paths": [path]})).await;
    assert_eq!(messages[0]["series"]["path"], path);
    let ipc = ipc_batches(&messages[1..]);
    assert_eq!(rows(&ipc), rows(&on_b.batches));
    assert_eq!(ipc[0].schema(), on_b.batches[0].schema());

    // Interval replace through B: [06:00, 12:00) becomes two points.
    replace_six_to_twelve(&b, path).await;
    let window = a.read_series(path, T0..T0 + 14 * HOUR).await.unwrap();
    assert_eq!(times(&window), hours_replaced(14));
    assert_eq!(
        window.info.points,
        many as u64 - 4,
        "the header is the whole series'"
    );
    // Half-open: [01:00, 03:00) is two points.
    check_half_open(&a, path).await;
    // An empty table with an interval deletes it; without one, it is refused.
    check_empty_writes(&a, &b, path).await;
    // A write without an interval replaces from its first point to its last.
    let tail = b
        .write_series(path, Interval::all(), vec![hourly(many - 10, 20, 1.0)])
        .await
        .unwrap();
    assert_eq!((tail.points_written, tail.points_deleted), (20, 10));
    let after = b.describe_series(path).await.unwrap();
    assert_eq!(after.points, many as u64 - 7 + 10);
    assert_eq!(after.last_ms, Some(T0 + (many + 9) * HOUR));
    assert_eq!(points_in(&a, path).await as u64, after.points);

    // Deleted through one node: gone for both, and its table with it.
    b.rm(path, false).await.unwrap();
    assert!(a.read_series(path, Interval::all()).await.is_err());
    a.create_series(path, &SeriesSpec::new(Resolution::Hour), false)
        .await
        .unwrap();
    assert_eq!(points_in(&b, path).await, 0, "a new series starts empty");
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn timeseries_sessions_isolate_commit_roll_back_and_keep_work_past_a_bad_write() {
    let path = "/home/admin/meter";
    let (_cluster, a, b) =
        two_nodes_with_series(path, SeriesSpec::new(Resolution::Breakpoint)).await;
    a.write_series(
        path,
        Interval::all(),
        vec![points(vec![1, 2, 3], vec![0; 3], vec![1.0, 2.0, 3.0]).unwrap()],
    )
    .await
    .unwrap();

    let session = a.session().await.unwrap();
    session
        .write_series(
            path,
            Interval::new(0, 10),
            vec![points(vec![5], vec![0], vec![5.0]).unwrap()],
        )
        .await
        .unwrap();
    // The session sees its own write; nobody else does, on either node.
    assert_eq!(points_in(&session, path).await, 1);
    assert_eq!(session.describe_series(path).await.unwrap().points, 1);
    assert_eq!(points_in(&a, path).await, 3);
    assert_eq!(points_in(&b, path).await, 3);
    // Another writer waits for the session's series, then gets CONFLICT.
    assert_error(
        b.write_series(
            path,
            Interval::all(),
            vec![points(vec![100], vec![0], vec![1.0]).unwrap()],
        )
        .await,
        ErrorCode::Conflict,
        "open session",
    );
    // A rejected write inside the session leaves its earlier work alone.
    assert_unordered_points_refused(&session, path).await;
    session
        .write_series(
            path,
            Interval::new(6, 8),
            vec![points(vec![6, 7], vec![0, 0], vec![6.0, 7.0]).unwrap()],
        )
        .await
        .unwrap();
    let own = session.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(times(&own), vec![5, 6, 7]);
    let ended = session.commit().await.unwrap();
    assert_eq!(ended.series, 1);
    let committed = b.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(times(&committed), vec![5, 6, 7]);
    assert_eq!(committed.info.points, 3);

    // Rolled back: nothing of it is kept, and the series is free again.
    let session = b.session().await.unwrap();
    session
        .write_series(
            path,
            Interval::all(),
            vec![points(vec![50, 60], vec![0, 0], vec![1.0, 1.0]).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(points_in(&session, path).await, 5);
    session.rollback().await.unwrap();
    assert_eq!(
        times(&a.read_series(path, Interval::all()).await.unwrap()),
        vec![5, 6, 7]
    );
    a.write_series(
        path,
        Interval::all(),
        vec![points(vec![100], vec![0], vec![1.0]).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(b.describe_series(path).await.unwrap().points, 4);
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn timeseries_bad_writes_are_refused_and_change_nothing() {
    let path = "/home/admin/load";
    let (_cluster, a, b) = two_nodes_with_series(path, SeriesSpec::new(Resolution::Min15)).await;
    a.write_series(path, Interval::all(), vec![quarter_hours()])
        .await
        .unwrap();
    let before = b.read_series(path, Interval::all()).await.unwrap();

    // A bad row in a later batch, after a whole COPY chunk went in, still
    // writes nothing.
    let big = points(
        (0..40_000).map(|i| T0 + 100 * Q + i * Q).collect(),
        vec![0; 40_000],
        vec![3.0; 40_000],
    )
    .unwrap();
    let later = points(
        vec![T0 + 50_000 * Q, T0 + 49_999 * Q],
        vec![0, 0],
        vec![3.0, 3.0],
    )
    .unwrap();

    for (interval, batches, words) in
        bad_writes()
            .into_iter()
            .chain([(Interval::all(), vec![big, later], "row 40002")])
    {
        for client in [&a, &b] {
            assert_error(
                client.write_series(path, interval, batches.clone()).await,
                ErrorCode::InvalidArgument,
                words,
            );
        }
    }
    let after = a.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(
        rows(&after.batches),
        rows(&before.batches),
        "rejected writes changed nothing"
    );
    assert_eq!(after.info.points, 8);
}

/// A stock Arrow Flight client on node `n`, logged in as the admin.
async fn flight_on(cluster: &Cluster, n: usize) -> arrow_flight::FlightClient {
    use prost::Message;
    let (channel, username, password) = cluster.channel_to(n).await;
    let mut client = arrow_flight::FlightClient::new(channel);
    let basic = arrow_flight::BasicAuth { username, password };
    let token = client.handshake(basic.encode_to_vec()).await.unwrap();
    let bearer = format!("Bearer {}", String::from_utf8(token.to_vec()).unwrap());
    client.add_header("authorization", &bearer).unwrap();
    client
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn a_keyed_series_write_sent_again_through_another_node_is_applied_once() {
    let path = "/home/admin/meter";
    let (_cluster, a, b) = two_nodes_with_series(path, SeriesSpec::new(Resolution::Hour)).await;
    let day = || vec![hourly(0, 24, 1.5)];
    // The first try, then the same call (its outcome lost, say) through the
    // other node: the second answers with the first outcome. Applied again,
    // it would have reported the 24 points it replaced as deleted.
    let first = (a.with_idempotency_key("meter-day-1").unwrap())
        .write_series(path, Interval::all(), day())
        .await
        .unwrap();
    let again = (b.with_idempotency_key("meter-day-1").unwrap())
        .write_series(path, Interval::all(), day())
        .await
        .unwrap();
    assert_eq!((first.points_written, first.points_deleted), (24, 0));
    assert_eq!(again, first);
    assert_eq!(points_in(&a, path).await, 24);
    // The same key with other points is refused, and changes nothing.
    let other = (b.with_idempotency_key("meter-day-1").unwrap())
        .write_series(path, Interval::all(), vec![hourly(0, 2, 9.0)])
        .await;
    assert_error(other, ErrorCode::InvalidArgument, "used for another call");
    let kept = a.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(rows(&kept.batches), rows(&day()));
    // Writes without a key of their own get one made per call: a new
    // write is applied as usual (an open interval spans its own points).
    let replaced = b
        .write_series(path, Interval::all(), vec![hourly(0, 2, 9.0)])
        .await
        .unwrap();
    assert_eq!((replaced.points_written, replaced.points_deleted), (2, 2));
}

#[tokio::test]
#[ignore = "needs PostgreSQL and NATS: make test-cluster"]
async fn timeseries_over_arrow_flight_on_either_node() {
    let path = "/home/admin/wind";
    let (cluster, a, b) = two_nodes_with_series(path, SeriesSpec::new(Resolution::Hour)).await;
    a.write_series(path, Interval::all(), vec![hourly(0, 48, 2.5)])
        .await
        .unwrap();

    // Read through B's Flight: the same points as A's native read.
    let mut flight = flight_on(&cluster, 1).await;
    let descriptor = arrow_flight::FlightDescriptor::new_path(vec![path.into()]);
    let info = flight.get_flight_info(descriptor.clone()).await.unwrap();
    assert_eq!(info.total_records, 48);
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let batches: Vec<RecordBatch> = collected(flight.do_get(ticket).await.unwrap()).await;
    let native = a.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(rows(&batches), rows(&native.batches));

    // Written through B's Flight, interval replaced, read natively on A.
    let command = serde_json::json!({"path": path, "start": T0, "end": T0 + 24 * HOUR});
    let put = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_cmd(
            command.to_string(),
        )))
        .build(futures::stream::iter([Ok(hourly(0, 12, 9.0))]));
    let results: Vec<arrow_flight::PutResult> = collected(flight.do_put(put).await.unwrap()).await;
    let summary: serde_json::Value = serde_json::from_slice(&results[0].app_metadata).unwrap();
    assert_eq!(
        (&summary["points_written"], &summary["points_deleted"]),
        (&serde_json::json!(12), &serde_json::json!(24)),
        "{summary}"
    );
    let after = a.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(after.num_points(), 36);
    assert_eq!(b.describe_series(path).await.unwrap().points, 36);

    // A Flight client's keyed write (the key as a call header), sent again
    // through the other node: applied once, the first summary given again
    // (applied twice, the second would report its own 6 points deleted, not
    // the 12 the first replaced).
    let keyed_put = |points: RecordBatch| {
        let command = serde_json::json!({"path": path, "start": T0, "end": T0 + 24 * HOUR});
        arrow_flight::encode::FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(arrow_flight::FlightDescriptor::new_cmd(
                command.to_string(),
            )))
            .build(futures::stream::iter([Ok(points)]))
    };
    let mut summaries = Vec::new();
    for n in [0, 1] {
        let mut flight = flight_on(&cluster, n).await;
        flight
            .add_header("x-busbar-idempotency-key", "wind-put-1")
            .unwrap();
        let put = flight.do_put(keyed_put(hourly(0, 6, 7.0))).await.unwrap();
        let results: Vec<arrow_flight::PutResult> = collected(put).await;
        let summary: serde_json::Value = serde_json::from_slice(&results[0].app_metadata).unwrap();
        summaries.push(summary);
    }
    assert_eq!(summaries[0], summaries[1]);
    assert_eq!(summaries[0]["points_deleted"], 12, "{}", summaries[0]);
    // The same key with other points is refused, and changes nothing.
    let mut flight = flight_on(&cluster, 1).await;
    flight
        .add_header("x-busbar-idempotency-key", "wind-put-1")
        .unwrap();
    let other = match flight.do_put(keyed_put(hourly(0, 6, 1.0))).await {
        Ok(put) => futures::TryStreamExt::try_collect::<Vec<_>>(put)
            .await
            .map(drop),
        Err(error) => Err(error),
    };
    let refused = other.expect_err("another write under a used key");
    assert!(
        refused.to_string().contains("used for another call"),
        "{refused}"
    );
    let kept = a.read_series(path, Interval::all()).await.unwrap();
    assert_eq!(kept.num_points(), 30);
    let first_hours = &rows(&kept.batches)[..6];
    assert!(first_hours.iter().all(|&(_, _, v)| v == 7.0f64.to_bits()));
}
