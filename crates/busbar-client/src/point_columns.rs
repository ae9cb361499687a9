//! Record batches rebuilt from a time-series read in the columns form
//! (`POINTS_COLUMNS`).
//!
//! The node sends each batch as a `PointColumns` header and then, as
//! `column` pieces, the columns that do not follow a rule: the times unless
//! they are on a regular step, the flags unless they are all the same, and
//! always the values. A regular series without flags so crosses in 8 bytes
//! per point instead of the Arrow IPC form's 20; the rules are expanded here
//! into ordinary Arrow columns, so callers see the same batches either way.
//! Each piece already sits in its own buffer with Arrow's alignment (see
//! `pieces`), and the arrays are views of it.

use crate::error::{Error, ErrorCode, Result};
use crate::pieces::MAX_MESSAGE_BYTES;
use crate::timeseries::{points_of, protocol};
use arrow_array::RecordBatch;
use arrow_buffer::{ArrowNativeType, Buffer, ScalarBuffer};
use busbar_proto::v1 as pb;

/// The most rows one batch may have: no more than one message could carry
/// in its widest column. A header over it ends the read with
/// RESOURCE_EXHAUSTED before anything is allocated for it.
pub(crate) const MAX_BATCH_ROWS: usize = MAX_MESSAGE_BYTES / 8;

/// A batch whose header has come and whose columns are still arriving.
struct Pending {
    rows: usize,
    times: Option<pb::TimeStep>,
    flags: Option<u32>,
    /// The columns received so far, in the order they come.
    columns: Vec<Buffer>,
}

impl Pending {
    /// How many `column` pieces the batch sends.
    fn expected(&self) -> usize {
        1 + usize::from(self.times.is_none()) + usize::from(self.flags.is_none())
    }

    /// The byte width of the next column to arrive.
    fn next_width(&self) -> usize {
        match (
            self.columns.len(),
            self.times.is_some(),
            self.flags.is_some(),
        ) {
            // Times first, unless a rule gives them.
            (0, false, _) => 8,
            // Then flags, unless a rule gives them.
            (0, true, false) | (1, false, false) => 4,
            _ => 8,
        }
    }

    fn into_batch(self) -> Result<RecordBatch> {
        let rows = self.rows;
        let mut columns = self.columns.into_iter();
        let times = match self.times {
            Some(step) => regular_times(step.first_ms, step.step_ms, rows),
            None => scalars(columns.next(), rows)?,
        };
        let flags = match self.flags {
            Some(0) => zeros(rows),
            Some(flags) => vec![flags; rows].into(),
            None => scalars(columns.next(), rows)?,
        };
        let values = scalars(columns.next(), rows)?;
        points_of(times, flags, values)
            .map_err(|e| protocol(&format!("a batch Arrow refuses: {e}")))
    }
}

/// `rows` times from `first` on, `step` apart (the header was checked: every
/// one fits in an i64). Written eight at a time from one running base, so
/// the loop is vector additions: `first + i * step` per row made the
/// compiler emulate 64-bit multiplies, and took as long as decrypting the
/// values.
fn regular_times(first: i64, step: i64, rows: usize) -> ScalarBuffer<i64> {
    const LANES: usize = 8;
    let lanes: [i64; LANES] = std::array::from_fn(|k| k as i64 * step);
    let mut out = Vec::<i64>::with_capacity(rows);
    let mut base = first;
    let mut groups = out.spare_capacity_mut()[..rows].chunks_exact_mut(LANES);
    for group in &mut groups {
        for (slot, lane) in group.iter_mut().zip(lanes) {
            slot.write(base.wrapping_add(lane));
        }
        // Past the last time only after the last group, where it is unused.
        base = base.wrapping_add(lanes[LANES - 1].wrapping_add(step));
    }
    for (slot, lane) in groups.into_remainder().iter_mut().zip(lanes) {
        slot.write(base.wrapping_add(lane));
    }
    // SAFETY: the groups and their remainder are all `rows` slots, each
    // written above.
    unsafe { out.set_len(rows) };
    out.into()
}

/// `rows` zero flags. Most series have no flags set, so batches of up to a
/// stored chunk's size share one zeroed buffer (Arrow buffers are immutable)
/// instead of each zeroing one of its own.
fn zeros(rows: usize) -> ScalarBuffer<u32> {
    const SHARED_ROWS: usize = 32 * 1024;
    static SHARED: std::sync::LazyLock<ScalarBuffer<u32>> =
        std::sync::LazyLock::new(|| vec![0; SHARED_ROWS].into());
    if rows <= SHARED_ROWS {
        SHARED.slice(0, rows)
    } else {
        vec![0; rows].into()
    }
}

/// A received column as `rows` values of `T`, over the same memory when it
/// is aligned for `T` (a copy only when it is not).
fn scalars<T: ArrowNativeType>(column: Option<Buffer>, rows: usize) -> Result<ScalarBuffer<T>> {
    let column = column.ok_or_else(|| protocol("a batch is missing a column"))?;
    let column = if column.as_ptr().align_offset(std::mem::align_of::<T>()) == 0 {
        column
    } else {
        Buffer::from_slice_ref(column.as_slice())
    };
    Ok(ScalarBuffer::new(column, 0, rows))
}

/// Turns the headers and columns of one read, in the order they come, into
/// record batches.
#[derive(Default)]
pub(crate) struct ColumnsDecoder {
    pending: Option<Pending>,
}

impl ColumnsDecoder {
    /// Takes a batch's header.
    pub(crate) fn header(&mut self, header: pb::PointColumns) -> Result<()> {
        if self.pending.is_some() {
            return Err(protocol("a batch began before the last one's columns came"));
        }
        let rows = header.rows as usize;
        if rows > MAX_BATCH_ROWS {
            return Err(Error::new(
                ErrorCode::ResourceExhausted,
                format!("a batch of {rows} points is over the client's limit of {MAX_BATCH_ROWS}"),
            ));
        }
        if let Some(step) = &header.times {
            let span = (rows.max(1) as i64 - 1).checked_mul(step.step_ms);
            if span
                .and_then(|span| step.first_ms.checked_add(span))
                .is_none()
            {
                return Err(protocol("a time step that runs past the end of time"));
            }
            if rows > 1 && step.step_ms <= 0 {
                return Err(protocol("a time step that is not positive"));
            }
        }
        self.pending = Some(Pending {
            rows,
            times: header.times,
            flags: header.flags,
            columns: Vec::with_capacity(3),
        });
        Ok(())
    }

    /// Takes the next column; returns the batch once it is whole.
    pub(crate) fn column(&mut self, column: Buffer) -> Result<Option<RecordBatch>> {
        let pending = self
            .pending
            .as_mut()
            .ok_or_else(|| protocol("a column came without a batch header"))?;
        let need = pending.rows * pending.next_width();
        if column.len() != need {
            return Err(protocol(&format!(
                "a column of {} bytes where {} points need {need}",
                column.len(),
                pending.rows
            )));
        }
        pending.columns.push(column);
        if pending.columns.len() < pending.expected() {
            return Ok(None);
        }
        let whole = self.pending.take().expect("checked above");
        whole.into_batch().map(Some)
    }

    /// Where a series or the read ends: no batch may be left half-sent.
    pub(crate) fn finish(&self) -> Result<()> {
        match self.pending {
            None => Ok(()),
            Some(_) => Err(protocol("the points ended inside a batch")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt32Type};

    fn bytes<T: ArrowNativeType>(values: &[T]) -> Buffer {
        Buffer::from_slice_ref(values)
    }

    fn columns(batch: &RecordBatch) -> (Vec<i64>, Vec<u32>, Vec<f64>) {
        (
            batch
                .column(0)
                .as_primitive::<TimestampMillisecondType>()
                .values()
                .to_vec(),
            batch
                .column(1)
                .as_primitive::<UInt32Type>()
                .values()
                .to_vec(),
            batch
                .column(2)
                .as_primitive::<Float64Type>()
                .values()
                .to_vec(),
        )
    }

    fn header(rows: u32, times: Option<(i64, i64)>, flags: Option<u32>) -> pb::PointColumns {
        pb::PointColumns {
            rows,
            times: times.map(|(first_ms, step_ms)| pb::TimeStep { first_ms, step_ms }),
            flags,
        }
    }

    #[test]
    fn rules_expand_to_the_same_batch_as_sent_columns() {
        let times = vec![60_000, 120_000, 180_000];
        let flags = vec![0, 0, 0];
        let values = vec![1.5, -2.0, f64::NAN];
        // Everything sent.
        let mut decoder = ColumnsDecoder::default();
        decoder.header(header(3, None, None)).unwrap();
        assert!(decoder.column(bytes(&times)).unwrap().is_none());
        assert!(decoder.column(bytes(&flags)).unwrap().is_none());
        let sent = decoder.column(bytes(&values)).unwrap().unwrap();
        decoder.finish().unwrap();
        // Both rules: only the values come.
        decoder
            .header(header(3, Some((60_000, 60_000)), Some(0)))
            .unwrap();
        let ruled = decoder.column(bytes(&values)).unwrap().unwrap();
        // One rule each way.
        decoder
            .header(header(3, Some((60_000, 60_000)), None))
            .unwrap();
        assert!(decoder.column(bytes(&flags)).unwrap().is_none());
        let times_ruled = decoder.column(bytes(&values)).unwrap().unwrap();
        decoder.header(header(3, None, Some(0))).unwrap();
        assert!(decoder.column(bytes(&times)).unwrap().is_none());
        let flags_ruled = decoder.column(bytes(&values)).unwrap().unwrap();
        decoder.finish().unwrap();
        for batch in [&sent, &ruled, &times_ruled, &flags_ruled] {
            assert_eq!(batch.schema(), *crate::timeseries::POINTS_SCHEMA);
            let (t, f, v) = columns(batch);
            assert_eq!((t, f), (times.clone(), flags.clone()));
            assert_eq!(v[..2], values[..2]);
            assert!(v[2].is_nan());
        }
        // Zero flags are one shared buffer, not one per batch.
        let flags_at = |batch: &RecordBatch| batch.column(1).to_data().buffers()[0].as_ptr();
        assert_eq!(flags_at(&ruled), flags_at(&flags_ruled));
        // Flags other than 0, and a single point with step 0.
        decoder.header(header(1, Some((5, 0)), Some(6))).unwrap();
        let one = decoder.column(bytes(&[7.0f64])).unwrap().unwrap();
        assert_eq!(columns(&one), (vec![5], vec![6], vec![7.0]));
    }

    #[test]
    fn regular_times_are_every_step_from_the_first() {
        for rows in [0, 1, 7, 8, 9, 16, 1000] {
            for (first, step) in [(0, 1), (-5, 60_000), (i64::MAX - 999, 1), (3, 0)] {
                if step == 0 && rows > 1 {
                    continue;
                }
                let expected: Vec<i64> = (0..rows as i64).map(|i| first + i * step).collect();
                assert_eq!(regular_times(first, step, rows).to_vec(), expected);
            }
        }
    }

    #[test]
    fn an_unaligned_column_is_copied_not_refused() {
        let mut raw = vec![0u8; 8 * 2 + 1];
        raw[1..9].copy_from_slice(&1.25f64.to_le_bytes());
        raw[9..17].copy_from_slice(&2.5f64.to_le_bytes());
        let unaligned = Buffer::from_vec(raw).slice(1);
        let mut decoder = ColumnsDecoder::default();
        decoder.header(header(2, Some((0, 1)), Some(0))).unwrap();
        let batch = decoder.column(unaligned).unwrap().unwrap();
        assert_eq!(columns(&batch).2, vec![1.25, 2.5]);
    }

    /// What a node sends, one piece at a time.
    enum Sent {
        Header(pb::PointColumns),
        Column(Buffer),
    }

    /// Feeds `pieces` and then ends the points; returns the first error.
    fn first_error(pieces: Vec<Sent>) -> Error {
        let mut decoder = ColumnsDecoder::default();
        for piece in pieces {
            let result = match piece {
                Sent::Header(header) => decoder.header(header),
                Sent::Column(column) => decoder.column(column).map(|_| ()),
            };
            if let Err(error) = result {
                return error;
            }
        }
        decoder.finish().unwrap_err()
    }

    #[test]
    fn bad_sequences_are_errors() {
        use Sent::{Column, Header};
        let error = first_error(vec![Column(bytes(&[1.0f64]))]);
        assert!(
            error.message().contains("without a batch header"),
            "{error}"
        );
        let error = first_error(vec![Header(header(2, None, None)), Column(bytes(&[1i64]))]);
        assert!(
            error.message().contains("where 2 points need 16"),
            "{error}"
        );
        let error = first_error(vec![
            Header(header(2, None, Some(0))),
            Column(bytes(&[1i64, 2])),
        ]);
        assert!(error.message().contains("ended inside a batch"), "{error}");
        let error = first_error(vec![
            Header(header(1, None, None)),
            Header(header(1, None, None)),
        ]);
        assert!(error.message().contains("before the last one's"), "{error}");
        let error = first_error(vec![Header(header(2, Some((0, 0)), Some(0)))]);
        assert!(error.message().contains("not positive"), "{error}");
        let error = first_error(vec![Header(header(3, Some((i64::MAX - 1, 1)), Some(0)))]);
        assert!(error.message().contains("past the end of time"), "{error}");
        let error = first_error(vec![Header(header(u32::MAX, None, None))]);
        assert_eq!(error.code(), ErrorCode::ResourceExhausted);
    }
}
