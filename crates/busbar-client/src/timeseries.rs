//! Time series: points as Arrow record batches of
//! `utc_time: timestamp[ms, UTC], flags: uint32, value: float64`, read and
//! written in streamed chunks of any total size.

use crate::api::Resource;
use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::pieces::Piece;
use crate::point_columns::ColumnsDecoder;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
use arrow_buffer::ScalarBuffer;
use busbar_proto::v1::{
    self as pb, read_series_response::Part as ReadPart, time_series_client::TimeSeriesClient,
    write_series_request::Part as WritePart,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::sync::Arc;

pub use pb::{Curve, Resolution, SeriesInfo, WriteSeriesResponse};

/// Point flags: bits of the `flags` column. A point with no bits set is OK.
pub mod flags {
    pub const OK: u32 = 0;
    /// No value was measured; the value is meaningless (NaN by convention).
    pub const MISSING: u32 = 1;
    /// A value exists but is doubtful.
    pub const SUSPECT: u32 = 2;
    /// A value exists and is known to be wrong.
    pub const NOT_OK: u32 = 4;
}

/// The schema of every table of points (one definition with the node's).
pub use busbar_types::POINTS_SCHEMA;

/// A record batch of points from three columns of equal length.
pub fn points(times_ms: Vec<i64>, flags: Vec<u32>, values: Vec<f64>) -> Result<RecordBatch> {
    points_of(times_ms.into(), flags.into(), values.into())
        .map_err(|e| Error::invalid_argument(format!("bad points: {e}")))
}

/// A record batch of points over the three buffers as they are.
pub(crate) fn points_of(
    times_ms: ScalarBuffer<i64>,
    flags: ScalarBuffer<u32>,
    values: ScalarBuffer<f64>,
) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMillisecondArray::new(times_ms, None).with_timezone("UTC")),
        Arc::new(UInt32Array::new(flags, None)),
        Arc::new(Float64Array::new(values, None)),
    ];
    RecordBatch::try_new(POINTS_SCHEMA.clone(), columns)
}

/// Resolutions by their one documented spelling, the first of each row;
/// the others (the protocol's names among them) are accepted too, in any
/// case, so what `describe`, `busbar ts ls` or the JSON of a call shows can
/// be given back to `create` as it is.
const RESOLUTION_NAMES: [(Resolution, &[&str]); 11] = [
    (Resolution::Breakpoint, &["breakpoint", "irregular"]),
    (Resolution::Min1, &["1min", "min1", "minute"]),
    (Resolution::Min5, &["5min", "min5"]),
    (Resolution::Min10, &["10min", "min10"]),
    (Resolution::Min15, &["15min", "min15"]),
    (Resolution::Min30, &["30min", "min30"]),
    (Resolution::Hour, &["hour", "1h", "hourly"]),
    (Resolution::Day, &["day", "daily"]),
    (Resolution::Week, &["week", "weekly"]),
    (Resolution::Month, &["month", "monthly"]),
    (Resolution::Year, &["year", "yearly"]),
];

const CURVE_NAMES: [(Curve, &[&str]); 2] = [
    (Curve::Staircase, &["staircase", "step"]),
    (Curve::PiecewiseLinear, &["linear", "piecewise_linear"]),
];

fn named<T: Copy>(table: &[(T, &[&str])], text: &str, what: &str) -> Result<T> {
    let wanted = text.trim().to_ascii_lowercase();
    table
        .iter()
        .find(|(_, names)| names.contains(&wanted.as_str()))
        .map(|(value, _)| *value)
        .ok_or_else(|| {
            let canonical: Vec<&str> = table.iter().map(|(_, names)| names[0]).collect();
            Error::invalid_argument(format!("bad {what} {text:?}: use {}", canonical.join(", ")))
        })
}

fn name_of<T: PartialEq>(table: &[(T, &[&'static str])], value: T) -> &'static str {
    table
        .iter()
        .find(|(v, _)| *v == value)
        .map_or("unspecified", |(_, names)| names[0])
}

/// A resolution from any of its spellings (`15min`, `min15`, `MIN15`).
pub fn parse_resolution(text: &str) -> Result<Resolution> {
    named(&RESOLUTION_NAMES, text, "resolution")
}

/// A resolution's documented spelling (`15min`).
pub fn resolution_name(resolution: Resolution) -> &'static str {
    name_of(&RESOLUTION_NAMES, resolution)
}

/// A curve from any of its spellings (`linear`, `PIECEWISE_LINEAR`).
pub fn parse_curve(text: &str) -> Result<Curve> {
    named(&CURVE_NAMES, text, "curve")
}

/// A curve's documented spelling (`staircase`, `linear`).
pub fn curve_name(curve: Curve) -> &'static str {
    name_of(&CURVE_NAMES, curve)
}

/// A series' definition (one definition with the node's).
pub use busbar_types::SeriesSpec;

/// A half-open interval `[start, end)` in epoch milliseconds UTC; an open
/// end reaches the first or last point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interval {
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

impl Interval {
    /// Every point.
    pub fn all() -> Interval {
        Interval::default()
    }

    pub fn new(start_ms: i64, end_ms: i64) -> Interval {
        Interval {
            start_ms: Some(start_ms),
            end_ms: Some(end_ms),
        }
    }
}

impl From<std::ops::Range<i64>> for Interval {
    fn from(range: std::ops::Range<i64>) -> Interval {
        Interval::new(range.start, range.end)
    }
}

/// One series read back: its definition and extent, and its points.
#[derive(Debug, Clone)]
pub struct SeriesData {
    pub info: SeriesInfo,
    pub batches: Vec<RecordBatch>,
}

impl SeriesData {
    pub fn num_points(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What a streamed read yields: each series' header, then its points.
#[derive(Debug, Clone)]
pub enum SeriesChunk {
    Start(SeriesInfo),
    Points(RecordBatch),
}

/// The number of `ReadSeriesResponse.column`.
const COLUMN_FIELD: u32 = 4;

/// The largest Arrow IPC message the client takes from a node. The node is
/// trusted for size (a result is as big as the caller asked for, and the
/// decoder only ever holds bytes that arrived); the checks in busbar-ipc
/// still keep malformed bytes from panicking the caller's process.
const NODE_MESSAGE_LIMIT: usize = isize::MAX as usize;

/// A decoder for an Arrow IPC stream a node sends.
pub(crate) fn node_ipc() -> busbar_ipc::Decoder {
    busbar_ipc::Decoder::new(NODE_MESSAGE_LIMIT)
}

/// Turns the pieces of a read into series headers and record batches,
/// whichever form the points come in.
struct SeriesDecoder {
    /// The current series' Arrow IPC stream, when the node sends that form.
    ipc: busbar_ipc::Decoder,
    columns: ColumnsDecoder,
    ready: std::collections::VecDeque<SeriesChunk>,
}

impl Default for SeriesDecoder {
    fn default() -> Self {
        SeriesDecoder {
            ipc: node_ipc(),
            columns: ColumnsDecoder::default(),
            ready: Default::default(),
        }
    }
}

/// The fuzz target `client_series_read` (`fuzz/`, `make fuzz`): the pieces
/// of a read as a node could send them, each a length byte and that many
/// bytes; an even length is a `ReadSeriesResponse`, an odd one a bare
/// column. Errors are expected; a panic, a hang or memory the bytes did not
/// pay for is the finding.
#[doc(hidden)]
pub fn fuzz_series_read(data: &[u8]) {
    use prost::Message;
    let mut decoder = SeriesDecoder::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (frame, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let piece = if len % 2 == 0 {
            match pb::ReadSeriesResponse::decode(frame) {
                Ok(message) => Piece::Message(message),
                Err(_) => return,
            }
        } else {
            Piece::Bytes(arrow_buffer::Buffer::from(frame.to_vec()))
        };
        if decoder.push(piece).is_err() {
            return;
        }
    }
    let _ = decoder.columns.finish();
}

impl SeriesDecoder {
    fn push(&mut self, piece: Piece<pb::ReadSeriesResponse>) -> Result<()> {
        let part = match piece {
            Piece::Bytes(column) => return self.column(column),
            Piece::Message(pb::ReadSeriesResponse { part: Some(part) }) => part,
            Piece::Message(_) => return Err(protocol("an empty message")),
        };
        match part {
            ReadPart::Series(info) => {
                self.columns.finish()?;
                self.ipc = node_ipc();
                self.ready.push_back(SeriesChunk::Start(info));
            }
            ReadPart::Columns(header) => self.columns.header(header)?,
            // The same piece with other fields next to it.
            ReadPart::Column(bytes) => self.column(arrow_buffer::Buffer::from(bytes))?,
            ReadPart::ArrowIpc(bytes) => {
                for batch in self.ipc.decode(arrow_buffer::Buffer::from(bytes)) {
                    let batch = batch.map_err(|e| protocol(&format!("bad Arrow IPC: {e}")))?;
                    self.ready.push_back(SeriesChunk::Points(batch));
                }
            }
        }
        Ok(())
    }

    fn column(&mut self, column: arrow_buffer::Buffer) -> Result<()> {
        if let Some(batch) = self.columns.column(column)? {
            self.ready.push_back(SeriesChunk::Points(batch));
        }
        Ok(())
    }
}

pub(crate) fn protocol(message: &str) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("unexpected time-series response: {message}"),
    )
}

impl Client {
    fn timeseries_client(&self) -> TimeSeriesClient<crate::client::Intercepted> {
        TimeSeriesClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }

    /// Creates a time series (missing parent folders too, with `parents`).
    pub async fn create_series(
        &self,
        path: &str,
        spec: &SeriesSpec,
        parents: bool,
    ) -> Result<Resource> {
        self.create_series_request(path, spec, parents, false).await
    }

    /// Like [`create_series`](Self::create_series), but an existing series
    /// of the same definition is returned instead of ALREADY_EXISTS (one of
    /// another definition, or another kind of resource, is still an error).
    pub async fn ensure_series(
        &self,
        path: &str,
        spec: &SeriesSpec,
        parents: bool,
    ) -> Result<Resource> {
        self.create_series_request(path, spec, parents, true).await
    }

    async fn create_series_request(
        &self,
        path: &str,
        spec: &SeriesSpec,
        parents: bool,
        exist_ok: bool,
    ) -> Result<Resource> {
        self.create_resource(pb::CreateResourceRequest {
            path: path.into(),
            kind: pb::ResourceKind::Timeseries as i32,
            parents,
            series: Some(spec.to_proto()),
            exist_ok,
        })
        .await
    }

    /// A series' definition and extent.
    pub async fn describe_series(&self, path: &str) -> Result<SeriesInfo> {
        let request = pb::DescribeSeriesRequest {
            path: path.into(),
            session: self.session_id(),
        };
        Ok(self
            .timeseries_client()
            .describe(request)
            .await?
            .into_inner())
    }

    /// Streams the points in `interval` of each series in `paths`, in order:
    /// a [`SeriesChunk::Start`] per series, then its points batch by batch.
    pub async fn read_series_stream(
        &self,
        paths: &[&str],
        interval: impl Into<Interval>,
    ) -> Result<crate::BoxStream<SeriesChunk>> {
        let interval = interval.into();
        let request = pb::ReadSeriesRequest {
            paths: paths.iter().map(|p| p.to_string()).collect(),
            start_ms: interval.start_ms,
            end_ms: interval.end_ms,
            session: self.session_id(),
            // Regular times and uniform flags cross as rules (see
            // `point_columns`); a node that predates the form sends IPC.
            form: pb::PointsForm::PointsColumns.into(),
        };
        // The `column` pieces land in aligned buffers, one copy each.
        let responses = crate::pieces::server_streaming::<_, _, _, pb::ReadSeriesResponse>(
            self.intercepted(),
            "/busbar.v1.TimeSeries/Read",
            request,
            COLUMN_FIELD,
        )
        .await?;
        let state = (responses, SeriesDecoder::default());
        Ok(Box::pin(futures::stream::try_unfold(
            state,
            move |(mut responses, mut decoder)| async move {
                loop {
                    if let Some(chunk) = decoder.ready.pop_front() {
                        return Ok(Some((chunk, (responses, decoder))));
                    }
                    match responses.next().await.transpose()? {
                        Some(piece) => decoder.push(piece)?,
                        None => {
                            decoder.columns.finish()?;
                            return Ok(None);
                        }
                    }
                }
            },
        )))
    }

    /// Reads the points in `interval` of several series, in request order.
    pub async fn read_many_series(
        &self,
        paths: &[&str],
        interval: impl Into<Interval>,
    ) -> Result<Vec<SeriesData>> {
        let interval = interval.into();
        // A read whose connection was lost is read again whole.
        self.repeatable(|client| async move { client.collect_series(paths, interval).await })
            .await
    }

    async fn collect_series(&self, paths: &[&str], interval: Interval) -> Result<Vec<SeriesData>> {
        let mut chunks = self.read_series_stream(paths, interval).await?;
        let mut out: Vec<SeriesData> = Vec::with_capacity(paths.len());
        while let Some(chunk) = chunks.next().await {
            match chunk? {
                SeriesChunk::Start(info) => out.push(SeriesData {
                    info,
                    batches: Vec::new(),
                }),
                SeriesChunk::Points(batch) => out
                    .last_mut()
                    .ok_or_else(|| protocol("points before a series header"))?
                    .batches
                    .push(batch),
            }
        }
        Ok(out)
    }

    /// Reads the points in `interval` of one series.
    pub async fn read_series(
        &self,
        path: &str,
        interval: impl Into<Interval>,
    ) -> Result<SeriesData> {
        self.read_many_series(&[path], interval)
            .await?
            .pop()
            .ok_or_else(|| protocol("no series came back"))
    }

    /// Replaces `interval` of a series with the points of `batches` (a
    /// stream, so tables of any size go out chunk by chunk). An open start or
    /// end is the table's first timestamp or one millisecond past its last.
    pub async fn write_series_stream<S>(
        &self,
        path: &str,
        interval: impl Into<Interval>,
        batches: S,
    ) -> Result<WriteSeriesResponse>
    where
        S: Stream<Item = RecordBatch> + Send + 'static,
    {
        let interval = interval.into();
        let header = pb::WriteSeriesRequest {
            part: Some(WritePart::Header(pb::WriteSeriesHeader {
                path: path.into(),
                start_ms: interval.start_ms,
                end_ms: interval.end_ms,
                session: self.session_id(),
            })),
        };
        let piece = |bytes: Bytes| pb::WriteSeriesRequest {
            part: Some(WritePart::ArrowIpc(bytes)),
        };
        // Encoding errors end the stream early; the server then reports the
        // stream as malformed and writes nothing.
        let body = batches
            .flat_map(|batch| futures::stream::iter(slices(batch)))
            .scan(
                None::<arrow_ipc::writer::StreamWriter<Vec<u8>>>,
                |writer, batch| {
                    let encoded = (|| {
                        if writer.is_none() {
                            *writer = Some(arrow_ipc::writer::StreamWriter::try_new(
                                Vec::new(),
                                &batch.schema(),
                            )?);
                        }
                        let writer = writer.as_mut().expect("set above");
                        writer.write(&batch)?;
                        Ok::<_, arrow_schema::ArrowError>(Bytes::from(std::mem::take(
                            writer.get_mut(),
                        )))
                    })();
                    futures::future::ready(encoded.ok())
                },
            )
            .flat_map(|bytes| futures::stream::iter(split(bytes)))
            .map(piece);
        let messages = futures::stream::once(async { header }).chain(body);
        Ok(self.timeseries_client().write(messages).await?.into_inner())
    }

    /// Replaces `interval` of a series with the points of `batches`. On a
    /// cluster the write carries an idempotency key and is sent again to
    /// the next node when its outcome is lost: applied once, answered with
    /// its first outcome ([`write_series_stream`](Self::write_series_stream)
    /// cannot be sent again, so it is not retried).
    pub async fn write_series(
        &self,
        path: &str,
        interval: impl Into<Interval>,
        batches: Vec<RecordBatch>,
    ) -> Result<WriteSeriesResponse> {
        let interval = interval.into();
        self.keyed(|client| {
            let points = futures::stream::iter(batches.clone());
            async move { client.write_series_stream(path, interval, points).await }
        })
        .await
    }
}

/// Rows per Arrow IPC message sent, about [`SLICE_BYTES`] each: a node
/// refuses a message over its `--max-message-bytes` (16 MiB by default)
/// before reading it, so a table of any size goes out in messages well under
/// that. Slicing shares the batch's buffers; the IPC writer sends only the
/// rows of each slice.
fn slices(batch: RecordBatch) -> Vec<RecordBatch> {
    let rows = batch.num_rows();
    let bytes_per_row = (batch.get_array_memory_size() / rows.max(1)).max(1);
    let per_slice = (SLICE_BYTES / bytes_per_row).max(1);
    if rows <= per_slice {
        return vec![batch];
    }
    (0..rows)
        .step_by(per_slice)
        .map(|start| batch.slice(start, per_slice.min(rows - start)))
        .collect()
}

const SLICE_BYTES: usize = 4 << 20;

/// Pieces of at most 1 MiB, slices of one buffer.
fn split(bytes: Bytes) -> Vec<Bytes> {
    const PIECE: usize = 1 << 20;
    (0..bytes.len())
        .step_by(PIECE)
        .map(|start| bytes.slice(start..bytes.len().min(start + PIECE)))
        .collect()
}
