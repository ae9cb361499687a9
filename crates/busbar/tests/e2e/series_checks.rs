//! Points, reads and checks the time-series tests share, on one node and
//! across a cluster's nodes. Included by `e2e/timeseries.rs` and
//! `cluster/timeseries.rs` as a module of their own.

use crate::harness::assert_error;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt32Type};
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray, UInt32Array,
};
use arrow_schema::{DataType, Field, Schema};
use busbar_client::{Client, ErrorCode, Interval, SeriesData, flags, points};
use std::sync::Arc;

pub const HOUR: i64 = 3_600_000;
/// 2026-01-01T00:00:00Z
pub const T0: i64 = 1_767_225_600_000;
/// A quarter of an hour.
pub const Q: i64 = 15 * 60_000;

pub fn times(data: &SeriesData) -> Vec<i64> {
    data.batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec()
        })
        .collect()
}

/// Times, flags and values of `batches`, in order (NaN compared by its bits).
#[allow(dead_code)] // the cluster's tests only
pub fn rows(batches: &[RecordBatch]) -> Vec<(i64, u32, u64)> {
    batches
        .iter()
        .flat_map(|b| {
            let t = b.column(0).as_primitive::<TimestampMillisecondType>();
            let f = b.column(1).as_primitive::<UInt32Type>();
            let v = b.column(2).as_primitive::<Float64Type>();
            (0..b.num_rows())
                .map(|i| (t.value(i), f.value(i), v.value(i).to_bits()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `count` points from `from_hour` on, hour by hour, all `value`.
pub fn hourly(from_hour: i64, count: i64, value: f64) -> RecordBatch {
    let times: Vec<i64> = (from_hour..from_hour + count)
        .map(|h| T0 + h * HOUR)
        .collect();
    let n = times.len();
    points(times, vec![flags::OK; n], vec![value; n]).unwrap()
}

/// Replaces [06:00, 12:00) of the hourly series at `path` with two points
/// (07:00 and 09:00): the other four hours there go.
pub async fn replace_six_to_twelve(client: &Client, path: &str) {
    let two = points(
        vec![T0 + 7 * HOUR, T0 + 9 * HOUR],
        vec![flags::OK, flags::SUSPECT],
        vec![7.0, 9.0],
    )
    .unwrap();
    let replaced = client
        .write_series(path, T0 + 6 * HOUR..T0 + 12 * HOUR, vec![two])
        .await
        .unwrap();
    assert_eq!((replaced.points_written, replaced.points_deleted), (2, 6));
}

/// The times of the first `hours` hours of a series written hour by hour
/// after [`replace_six_to_twelve`].
pub fn hours_replaced(hours: i64) -> Vec<i64> {
    (0..hours)
        .filter(|h| !(6..12).contains(h) || *h == 7 || *h == 9)
        .map(|h| T0 + h * HOUR)
        .collect()
}

/// Half-open: [01:00, 03:00) of the hourly series at `path` is two points;
/// the end is excluded.
pub async fn check_half_open(client: &Client, path: &str) {
    let window = client
        .read_series(path, T0 + HOUR..T0 + 3 * HOUR)
        .await
        .unwrap();
    assert_eq!(times(&window), vec![T0 + HOUR, T0 + 2 * HOUR]);
}

/// An empty table with an interval deletes that interval ([00:00, 03:00)
/// of the hourly series at `path`, three points) through `deleter`;
/// without an interval `refused` is told it is an error, not a silent no-op.
pub async fn check_empty_writes(deleter: &Client, refused: &Client, path: &str) {
    let empty = points(vec![], vec![], vec![]).unwrap();
    let deleted = deleter
        .write_series(path, T0..T0 + 3 * HOUR, vec![empty.clone()])
        .await
        .unwrap();
    assert_eq!((deleted.points_written, deleted.points_deleted), (0, 3));
    assert_eq!(
        deleter
            .read_series(path, T0..T0 + 3 * HOUR)
            .await
            .unwrap()
            .num_points(),
        0
    );
    assert_error(
        refused
            .write_series(path, Interval::all(), vec![empty])
            .await,
        ErrorCode::InvalidArgument,
        "start and end",
    );
}

/// The messages of one `TimeSeries/Read` made by method name, as a generic
/// gRPC client makes it.
pub async fn read_by_name(client: &Client, request: serde_json::Value) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let mut call = client
        .stream("busbar.v1.TimeSeries/Read", Some(request))
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(message) = call.next().await {
        out.push(message.unwrap());
    }
    out
}

pub fn base64(value: &serde_json::Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().unwrap())
        .unwrap()
}

/// The batches of the Arrow IPC stream that `messages` (a read's messages
/// after its header) carry.
pub fn ipc_batches(messages: &[serde_json::Value]) -> Vec<RecordBatch> {
    let ipc: Vec<u8> = messages
        .iter()
        .flat_map(|m| base64(&m["arrow_ipc"]))
        .collect();
    arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Eight good points a quarter of an hour apart from T0, all 1.0: what a
/// 15-minute series holds before [`bad_writes`] try to change it.
pub fn quarter_hours() -> RecordBatch {
    points(
        (0..8).map(|i| T0 + i * Q).collect(),
        vec![0; 8],
        vec![1.0; 8],
    )
    .unwrap()
}

/// A write at `times`, with values unlike [`quarter_hours`]' (so a write
/// that got through would show).
pub fn rewrite(times: Vec<i64>) -> Vec<RecordBatch> {
    let n = times.len();
    vec![points(times, vec![0; n], vec![2.0; n]).unwrap()]
}

/// Writes a 15-minute series refuses (INVALID_ARGUMENT) with the words
/// their refusal must say: bad rows and wrong schemas.
pub fn bad_writes() -> Vec<(Interval, Vec<RecordBatch>, &'static str)> {
    let int_times = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("utc_time", DataType::Int64, false),
            Field::new("flags", DataType::UInt32, false),
            Field::new("value", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![T0])),
            Arc::new(UInt32Array::from(vec![0])),
            Arc::new(Float64Array::from(vec![1.0])),
        ],
    )
    .unwrap();
    let two_columns = RecordBatch::try_from_iter([
        (
            "utc_time",
            Arc::new(TimestampNanosecondArray::from(vec![T0 * 1_000_000])) as ArrayRef,
        ),
        ("value", Arc::new(Float64Array::from(vec![1.0])) as ArrayRef),
    ])
    .unwrap();
    vec![
        (
            Interval::all(),
            rewrite(vec![T0, T0 + 2 * Q, T0 + Q]),
            "row 3",
        ),
        (
            Interval::all(),
            rewrite(vec![T0, T0 + Q, T0 + Q]),
            "row 3: 2026-01-01T00:15:00Z repeats",
        ),
        (
            Interval::all(),
            rewrite(vec![T0, T0 + 7 * 60_000]),
            "row 2: 2026-01-01T00:07:00Z is not on the series' 15-minute grid",
        ),
        (
            Interval::new(T0, T0 + 4 * Q),
            rewrite(vec![T0, T0 + 4 * Q]),
            "row 2",
        ),
        (Interval::new(T0 + Q, T0), rewrite(vec![T0]), "empty"),
        (
            Interval::all(),
            vec![int_times],
            "utc_time is Int64; it must be a timestamp",
        ),
        (Interval::all(), vec![two_columns], "three"),
    ]
}
