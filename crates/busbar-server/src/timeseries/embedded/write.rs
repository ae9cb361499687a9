//! The write path: an interval replaced by new points, checked as they
//! arrive, inside the caller's transaction.

use super::*;

/// Replaces an interval of one series with new points, batch by batch, inside
/// the caller's transaction. Points are checked as they arrive; the first bad
/// row fails the write, and the caller rolls the transaction back.
pub struct SeriesWrite<'c> {
    check: WriteCheck,
    chunks: ChunkWriter<'c>,
}

/// Where checked points go: into chunks of up to [`CHUNK_POINTS`], each
/// replacing the old points up to its last one.
struct ChunkWriter<'c> {
    conn: &'c Connection,
    /// Old points before this time (from the interval's start) are gone.
    cleared_to: Option<i64>,
    pending: Points,
    summary: WriteSummary,
}

impl<'c> SeriesWrite<'c> {
    pub fn new(
        conn: &'c Connection,
        spec: &SeriesSpec,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<SeriesWrite<'c>> {
        Ok(SeriesWrite {
            check: WriteCheck::new(spec, start, end)?,
            chunks: ChunkWriter {
                conn,
                cleared_to: start,
                pending: Points::default(),
                summary: WriteSummary::default(),
            },
        })
    }

    /// Checks and takes one batch of points (see [`WriteCheck::push`]).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let chunks = &mut self.chunks;
        self.check.push(batch, |time, flag, value| {
            chunks.pending.push(time, flag, value);
            if chunks.pending.len() == CHUNK_POINTS {
                chunks.flush()?;
            }
            Ok(())
        })
    }

    /// Writes what is pending, deletes the rest of the interval and tidies
    /// the chunks at its edges.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.chunks.flush()?;
        let (start, end) = self.check.interval()?;
        let mut chunks = self.chunks;
        let from = chunks.cleared_to.unwrap_or(start);
        chunks.summary.deleted += clear(chunks.conn, from, end)?;
        compact(chunks.conn, start, end)?;
        chunks.summary.start_ms = start;
        chunks.summary.end_ms = end;
        Ok(chunks.summary)
    }
}

impl ChunkWriter<'_> {
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let first = self.pending.times[0];
        let last = self.pending.times[self.pending.len() - 1];
        let from = *self.cleared_to.get_or_insert(first);
        self.summary.deleted += clear(self.conn, from, last + 1)?;
        self.cleared_to = Some(last + 1);
        insert_chunk(self.conn, &self.pending)?;
        self.summary.written += self.pending.len() as u64;
        self.pending = Points::default();
        Ok(())
    }
}
