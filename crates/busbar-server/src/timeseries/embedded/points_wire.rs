//! Stored chunks read straight into the forms points travel in.
//!
//! A chunk's three column blobs already hold Arrow's little-endian layout, so
//! a read does not build Arrow arrays and then encode them: SQLite's
//! incremental blob I/O copies each column once, from storage into the
//! buffer that goes out. In the Arrow IPC form ([`read`]) that buffer is laid
//! out as one IPC record-batch message (header, then body): a piece of the
//! native `TimeSeries/Read` stream, the header and body of a Flight
//! `FlightData`, or a `RecordBatch` of zero-copy slices. In the columns form
//! ([`read_columns`]) each column is a buffer of its own.
//!
//! Times on a regular step and flags that are all the same are stored as
//! that rule, with an empty blob (see `timeseries::insert_chunk`). The IPC
//! form writes such a column out into its message; the columns form sends
//! the rule itself.

use super::{CHUNK_POINTS, Points, checked_step, corrupt, encode, regular_step, same_flags};
use crate::error::Result;
use crate::timeseries::model::POINTS_SCHEMA;
use bytes::Bytes;
use rusqlite::Connection;
use rusqlite::blob::Blob;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::LazyLock;

/// Arrow IPC pads the metadata and every body buffer to this many bytes
/// (arrow-rs' default); a body that starts aligned keeps every column aligned.
const ALIGN: usize = 64;
/// Continuation marker and metadata length, before each message's metadata.
const PREFIX: usize = 8;

/// The end-of-stream marker of the Arrow IPC stream format.
pub const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// The stream's first message: the points schema, framed.
pub static SCHEMA_MESSAGE: LazyLock<Bytes> = LazyLock::new(|| {
    let options = arrow_ipc::writer::IpcWriteOptions::default();
    let encoded = arrow_ipc::writer::IpcDataGenerator::default()
        .schema_to_bytes_with_dictionary_tracker(
            &POINTS_SCHEMA,
            &mut arrow_ipc::writer::DictionaryTracker::new(false),
            &options,
        );
    let mut framed = Vec::new();
    arrow_ipc::writer::write_message(&mut framed, encoded, &options)
        .expect("writing to a Vec cannot fail");
    Bytes::from(framed)
});

fn padded(len: usize) -> usize {
    len.div_ceil(ALIGN) * ALIGN
}

/// Where the three columns of `rows` points sit in a message body.
#[derive(Clone, Copy)]
struct Layout {
    rows: usize,
    flags_at: usize,
    values_at: usize,
    body_len: usize,
}

impl Layout {
    fn new(rows: usize) -> Layout {
        let flags_at = padded(rows * 8);
        let values_at = flags_at + padded(rows * 4);
        Layout {
            rows,
            flags_at,
            values_at,
            body_len: values_at + padded(rows * 8),
        }
    }

    /// The message's flatbuffer metadata: a record batch of three columns
    /// without nulls (a validity buffer of length 0 each, as the format
    /// allows when the null count is 0).
    fn metadata(&self) -> Vec<u8> {
        let rows = self.rows as i64;
        let at = |offset: usize, len: usize| arrow_ipc::Buffer::new(offset as i64, len as i64);
        let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(256);
        let nodes = fbb.create_vector(&[arrow_ipc::FieldNode::new(rows, 0); 3]);
        let buffers = fbb.create_vector(&[
            at(0, 0),
            at(0, self.rows * 8),
            at(self.flags_at, 0),
            at(self.flags_at, self.rows * 4),
            at(self.values_at, 0),
            at(self.values_at, self.rows * 8),
        ]);
        let mut batch = arrow_ipc::RecordBatchBuilder::new(&mut fbb);
        batch.add_length(rows);
        batch.add_nodes(nodes);
        batch.add_buffers(buffers);
        let batch = batch.finish().as_union_value();
        let mut message = arrow_ipc::MessageBuilder::new(&mut fbb);
        message.add_version(arrow_ipc::MetadataVersion::V5);
        message.add_header_type(arrow_ipc::MessageHeader::RecordBatch);
        message.add_bodyLength(self.body_len as i64);
        message.add_header(batch);
        let message = message.finish();
        fbb.finish(message, None);
        fbb.finished_data().to_vec()
    }
}

/// One record batch of points as a framed Arrow IPC message.
pub struct PointsMessage {
    #[cfg(test)]
    layout: Layout,
    message: Bytes,
    metadata_len: usize,
    body_at: usize,
}

impl PointsMessage {
    /// A message with room for `rows` points; `fill` must write all three
    /// column slots (times, flags, values) whole, or fail. Only the padding
    /// is zeroed: the columns are written once, straight from storage.
    fn build(
        rows: usize,
        fill: impl FnOnce([&mut [MaybeUninit<u8>]; 3]) -> Result<()>,
    ) -> Result<Self> {
        let layout = Layout::new(rows);
        let metadata = layout.metadata();
        let body_at = padded(PREFIX + metadata.len());
        let len = body_at + layout.body_len;
        let mut message = Vec::<u8>::with_capacity(len);
        let (header, body) = message.spare_capacity_mut()[..len].split_at_mut(body_at);
        let mut prefix = [0xFF; PREFIX];
        prefix[4..].copy_from_slice(&((body_at - PREFIX) as i32).to_le_bytes());
        let header_bytes = prefix.iter().chain(&metadata).chain(std::iter::repeat(&0));
        for (slot, byte) in header.iter_mut().zip(header_bytes) {
            slot.write(*byte);
        }
        let (times, rest) = body.split_at_mut(layout.flags_at);
        let (flags, values) = rest.split_at_mut(layout.values_at - layout.flags_at);
        let (times, times_pad) = times.split_at_mut(rows * 8);
        let (flags, flags_pad) = flags.split_at_mut(rows * 4);
        let (values, values_pad) = values.split_at_mut(rows * 8);
        for pad in [times_pad, flags_pad, values_pad] {
            pad.fill(MaybeUninit::new(0));
        }
        fill([times, flags, values])?;
        // SAFETY: every byte below `len` is now written: the header and the
        // padding above, the three columns by `fill`, which succeeded.
        unsafe { message.set_len(len) };
        Ok(PointsMessage {
            #[cfg(test)]
            layout,
            message: Bytes::from(message),
            metadata_len: metadata.len(),
            body_at,
        })
    }

    /// Points already in memory as one message, for a backend that does
    /// not keep Arrow's layout in storage (PostgreSQL's rows).
    pub(crate) fn from_points(points: &Points) -> Result<Self> {
        PointsMessage::build(points.len(), |[t, f, v]| {
            fill(t, points.times.iter().map(|time| time.to_le_bytes()));
            fill(f, points.flags.iter().map(|flags| flags.to_le_bytes()));
            fill(v, points.values.iter().map(|value| value.to_le_bytes()));
            Ok(())
        })
    }

    /// The whole framed message, as it goes in an IPC stream.
    pub fn framed(&self) -> Bytes {
        self.message.clone()
    }

    /// The flatbuffer metadata alone (Flight's `data_header`).
    pub fn metadata(&self) -> Bytes {
        self.message.slice(PREFIX..PREFIX + self.metadata_len)
    }

    /// The body alone (Flight's `data_body`).
    pub fn body(&self) -> Bytes {
        self.message.slice(self.body_at..)
    }

    /// The points as a record batch over the message's own memory.
    #[cfg(test)]
    pub fn batch(&self) -> Result<arrow_array::RecordBatch> {
        use arrow_array::{Float64Array, RecordBatch, TimestampMillisecondArray, UInt32Array};
        use arrow_buffer::ScalarBuffer;
        use std::sync::Arc;
        let body = arrow_buffer::Buffer::from(self.body());
        let rows = self.layout.rows;
        let times = ScalarBuffer::<i64>::new(body.clone(), 0, rows);
        let flags = ScalarBuffer::<u32>::new(body.clone(), self.layout.flags_at / 4, rows);
        let values = ScalarBuffer::<f64>::new(body, self.layout.values_at / 8, rows);
        RecordBatch::try_new(
            POINTS_SCHEMA.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::new(times, None).with_timezone("UTC")),
                Arc::new(UInt32Array::new(flags, None)),
                Arc::new(Float64Array::new(values, None)),
            ],
        )
        .map_err(|e| crate::error::Error::internal(format!("points message: {e}")))
    }
}

/// Blob handles on one chunk row's three columns, moved from row to row.
struct ChunkColumns<'c> {
    columns: Option<[Blob<'c>; 3]>,
}

impl<'c> ChunkColumns<'c> {
    fn at(&mut self, conn: &'c Connection, start_ms: i64) -> Result<&[Blob<'c>; 3]> {
        match &mut self.columns {
            Some(columns) => {
                for column in columns.iter_mut() {
                    column.reopen(start_ms)?;
                }
            }
            None => {
                let open = |name: &str| conn.blob_open("main", "chunks", name, start_ms, true);
                self.columns = Some([open("times")?, open("flags")?, open("vals")?]);
            }
        }
        Ok(self.columns.as_ref().expect("set above"))
    }
}

/// The rows of one stored chunk that a read sends.
struct ChunkRows<'a, 'c> {
    /// Blob handles on the chunk's times, flags and values.
    blobs: &'a [Blob<'c>; 3],
    /// The first row to send and one past the last.
    rows: Range<usize>,
    start_ms: i64,
    /// The step of the chunk's times, when they are regular.
    step_ms: Option<i64>,
    /// The flags of every point, when they are all the same.
    same_flags: Option<u32>,
}

impl ChunkRows<'_, '_> {
    /// Reads bytes `at..at + len` of column `column` into a buffer of their own.
    fn column(&self, column: usize, at: usize, len: usize) -> Result<Bytes> {
        let mut out = Vec::<u8>::with_capacity(len);
        self.blobs[column].raw_read_at_exact(&mut out.spare_capacity_mut()[..len], at)?;
        // SAFETY: `raw_read_at_exact` filled all `len` bytes, or failed.
        unsafe { out.set_len(len) };
        Ok(Bytes::from(out))
    }
}

/// Walks the chunks that hold points in `[from, to)` (unbounded where
/// `None`) in time order, handing `visit` each one's rows inside it; returns
/// how many points were visited.
fn each_chunk(
    conn: &Connection,
    from: Option<i64>,
    to: Option<i64>,
    visit: &mut dyn FnMut(ChunkRows<'_, '_>) -> Result<()>,
) -> Result<u64> {
    const _: () = assert!(
        cfg!(target_endian = "little"),
        "chunks hold little-endian columns"
    );
    let from = from.unwrap_or(i64::MIN);
    let to = to.unwrap_or(i64::MAX);
    if from >= to {
        return Ok(0);
    }
    // The chunk that holds `from` starts at or before it; only the columns'
    // sizes are read here, the blobs themselves through blob handles below.
    let mut stmt = conn.prepare_cached(
        "SELECT start_ms, last_ms, count, step_ms, same_flags FROM chunks
         WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms <= ?1), ?1)
           AND start_ms < ?2 ORDER BY start_ms",
    )?;
    let mut rows = stmt.query([from, to])?;
    let mut chunk = ChunkColumns { columns: None };
    let mut sent = 0;
    while let Some(row) = rows.next()? {
        let (start_ms, last_ms, count): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        if last_ms < from {
            continue;
        }
        let count = usize::try_from(count)
            .ok()
            .filter(|&n| n <= CHUNK_POINTS)
            .ok_or_else(|| corrupt("a chunk's point count is out of range"))?;
        let step_ms: Option<i64> = row.get(3)?;
        let same_flags = row
            .get::<_, Option<i64>>(4)?
            .map(|flags| {
                u32::try_from(flags).map_err(|_| corrupt("a chunk's flags are out of range"))
            })
            .transpose()?;
        if step_ms.is_some_and(|step| checked_step(start_ms, count, step) != Some(last_ms)) {
            return Err(corrupt("a chunk's time step does not match its times"));
        }
        let blobs = chunk.at(conn, start_ms)?;
        let [times, flags, values] = blobs;
        // A column kept as a rule has an empty blob.
        let fits = |blob: &Blob, width: usize, rule: bool| {
            blob.len() == count * width || (rule && blob.is_empty())
        };
        if !fits(times, 8, step_ms.is_some())
            || !fits(flags, 4, same_flags.is_some())
            || !fits(values, 8, false)
        {
            return Err(corrupt("a chunk has uneven columns"));
        }
        let (lo, hi) = if from <= start_ms && last_ms < to {
            (0, count)
        } else if let Some(step) = step_ms {
            // An edge chunk of regular times: where the interval cuts it.
            rows_within(count, (from, to), |i| start_ms + i as i64 * step)
        } else {
            // An edge chunk: find the points inside the interval.
            let mut stored = vec![0u8; count * 8];
            times.read_at_exact(&mut stored, 0)?;
            rows_within(count, (from, to), |i| {
                i64::from_le_bytes(stored[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
            })
        };
        if lo == hi {
            continue;
        }
        sent += (hi - lo) as u64;
        visit(ChunkRows {
            blobs,
            rows: lo..hi,
            start_ms,
            step_ms,
            same_flags,
        })?;
    }
    Ok(sent)
}

/// Reads the points in `[from, to)` (unbounded where `None`) as Arrow IPC
/// record-batch messages, one per stored chunk's part, in time order, each
/// handed to `emit`; returns how many points were read.
pub fn read(
    conn: &Connection,
    from: Option<i64>,
    to: Option<i64>,
    emit: &mut dyn FnMut(PointsMessage) -> Result<()>,
) -> Result<u64> {
    each_chunk(conn, from, to, &mut |chunk| {
        let Range { start: lo, end: hi } = chunk.rows;
        let [times, flags, values] = chunk.blobs;
        // `raw_read_at_exact` fills each slot whole or fails; a column kept
        // as a rule (an empty blob) is written out from it.
        let message = PointsMessage::build(hi - lo, |[t, f, v]| {
            match chunk.step_ms {
                Some(step) if times.is_empty() => {
                    let time = |i: usize| chunk.start_ms + i as i64 * step;
                    fill(t, (lo..hi).map(|i| time(i).to_le_bytes()));
                }
                _ => {
                    times.raw_read_at_exact(t, lo * 8)?;
                }
            }
            match chunk.same_flags {
                Some(same) if flags.is_empty() => fill(f, (lo..hi).map(|_| same.to_le_bytes())),
                _ => {
                    flags.raw_read_at_exact(f, lo * 4)?;
                }
            }
            values.raw_read_at_exact(v, lo * 8)?;
            Ok(())
        })?;
        emit(message)
    })
}

/// Writes `items` one after another into `slot`, which they fill exactly.
fn fill<const N: usize>(slot: &mut [MaybeUninit<u8>], items: impl Iterator<Item = [u8; N]>) {
    for (out, item) in slot.chunks_exact_mut(N).zip(items) {
        for (byte, value) in out.iter_mut().zip(item) {
            byte.write(value);
        }
    }
}

/// Regular times: row `i` is at `first_ms + i * step_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeStep {
    pub first_ms: i64,
    pub step_ms: i64,
}

/// A column of a [`PointsColumns`]: the rule all its rows follow, or its
/// little-endian values.
#[derive(Debug, Clone, PartialEq)]
pub enum Column<Rule> {
    Rule(Rule),
    Values(Bytes),
}

impl<Rule> Column<Rule> {
    /// The rule, when the column is one.
    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Column::Rule(rule) => Some(rule),
            Column::Values(_) => None,
        }
    }

    /// The little-endian values, when the column is not a rule.
    pub fn into_values(self) -> Option<Bytes> {
        match self {
            Column::Values(bytes) => Some(bytes),
            Column::Rule(_) => None,
        }
    }
}

/// One batch of points in the columns form.
#[derive(Debug, Clone, PartialEq)]
pub struct PointsColumns {
    pub rows: usize,
    pub times: Column<TimeStep>,
    pub flags: Column<u32>,
    /// Little-endian float64 values.
    pub values: Bytes,
}

impl PointsColumns {
    /// Points already in memory in the columns form, with the same rules a
    /// stored chunk keeps: regular times and flags all the same go as rules.
    pub(crate) fn from_points(points: &Points) -> Self {
        let times = match (regular_step(&points.times), points.times.first()) {
            (Some(step_ms), Some(&first_ms)) => Column::Rule(TimeStep { first_ms, step_ms }),
            _ => Column::Values(encode(&points.times, i64::to_le_bytes).into()),
        };
        let flags = match same_flags(&points.flags) {
            Some(flags) => Column::Rule(flags),
            None => Column::Values(encode(&points.flags, u32::to_le_bytes).into()),
        };
        PointsColumns {
            rows: points.len(),
            times,
            flags,
            values: encode(&points.values, f64::to_le_bytes).into(),
        }
    }
}

/// Reads the points in `[from, to)` (unbounded where `None`) in the columns
/// form, one batch per stored chunk's part, in time order, each handed to
/// `emit`; returns how many points were read. Times and flags are read from
/// storage only when the chunk does not record them as a rule.
pub fn read_columns(
    conn: &Connection,
    from: Option<i64>,
    to: Option<i64>,
    emit: &mut dyn FnMut(PointsColumns) -> Result<()>,
) -> Result<u64> {
    each_chunk(conn, from, to, &mut |chunk| {
        let Range { start: lo, end: hi } = chunk.rows;
        let rows = hi - lo;
        let times = match chunk.step_ms {
            Some(step_ms) => Column::Rule(TimeStep {
                first_ms: chunk.start_ms + lo as i64 * step_ms,
                step_ms,
            }),
            None => Column::Values(chunk.column(0, lo * 8, rows * 8)?),
        };
        let flags = match chunk.same_flags {
            Some(flags) => Column::Rule(flags),
            None => Column::Values(chunk.column(1, lo * 4, rows * 4)?),
        };
        emit(PointsColumns {
            rows,
            times,
            flags,
            values: chunk.column(2, lo * 8, rows * 8)?,
        })
    })
}

/// The rows `lo..hi` of a chunk of `count` points in time order (row `i`
/// at `time_at(i)`) that lie in `[from, to)`.
fn rows_within(
    count: usize,
    (from, to): (i64, i64),
    time_at: impl Fn(usize) -> i64,
) -> (usize, usize) {
    let first_at_or_after = |bound: i64| partition(count, |i| time_at(i) < bound);
    (first_at_or_after(from), first_at_or_after(to))
}

/// The first index in `0..len` where `before` turns false.
fn partition(len: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if before(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, RecordBatch};

    /// A message is a valid IPC stream message: arrow-rs' own reader decodes
    /// it, after the schema, to the same points as `batch()`.
    #[test]
    fn messages_decode_with_arrow_ipc() {
        for rows in [0usize, 1, 3, 17, 1000] {
            let message = PointsMessage::build(rows, |[t, f, v]| {
                let put = |slot: &mut [MaybeUninit<u8>], bytes: Vec<u8>| {
                    for (slot, byte) in slot.iter_mut().zip(bytes) {
                        slot.write(byte);
                    }
                };
                put(
                    t,
                    (0..rows)
                        .flat_map(|i| (1_000 * i as i64).to_le_bytes())
                        .collect(),
                );
                put(
                    f,
                    (0..rows)
                        .flat_map(|i| (i as u32 % 4).to_le_bytes())
                        .collect(),
                );
                put(
                    v,
                    (0..rows)
                        .flat_map(|i| (i as f64 * 0.5).to_le_bytes())
                        .collect(),
                );
                Ok(())
            })
            .unwrap();
            let mut stream = SCHEMA_MESSAGE.to_vec();
            stream.extend_from_slice(&message.framed());
            stream.extend_from_slice(&END_OF_STREAM);
            let decoded: Vec<RecordBatch> =
                arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(stream), None)
                    .unwrap()
                    .collect::<std::result::Result<_, _>>()
                    .unwrap();
            assert_eq!(decoded.len(), 1);
            assert_eq!(decoded[0], message.batch().unwrap());
            assert_eq!(decoded[0].num_rows(), rows);
            if rows > 3 {
                let values = decoded[0].column(2).as_any();
                let values = values.downcast_ref::<Float64Array>().unwrap();
                assert_eq!(values.value(3), 1.5);
            }
        }
    }
}
