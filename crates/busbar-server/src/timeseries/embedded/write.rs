//! The write path: an interval replaced by new points, checked as they
//! arrive, inside the caller's transaction.

use super::*;

/// Replaces an interval of one series with new points, batch by batch, inside
/// the caller's transaction. Points are checked as they arrive; the first bad
/// row fails the write, and the caller rolls the transaction back.
pub struct SeriesWrite<'c> {
    conn: &'c Connection,
    grid: Grid,
    start: Option<i64>,
    end: Option<i64>,
    /// Old points before this time (from the interval's start) are gone.
    cleared_to: Option<i64>,
    pending: Points,
    first: Option<i64>,
    last: Option<i64>,
    row: u64,
    summary: WriteSummary,
}

impl<'c> SeriesWrite<'c> {
    pub fn new(
        conn: &'c Connection,
        spec: &SeriesSpec,
        start: Option<i64>,
        end: Option<i64>,
    ) -> Result<SeriesWrite<'c>> {
        if let (Some(start), Some(end)) = (start, end)
            && start >= end
        {
            return Err(Error::invalid_argument(format!(
                "the interval [{}, {}) is empty: start must be before end",
                show_time(start),
                show_time(end)
            )));
        }
        Ok(SeriesWrite {
            conn,
            grid: Grid::new(spec)?,
            start,
            end,
            cleared_to: start,
            pending: Points::default(),
            first: None,
            last: None,
            row: 0,
            summary: WriteSummary::default(),
        })
    }

    /// Checks and takes one batch of points (any timestamp unit; naive
    /// timestamps are UTC; integer flags and numeric values are widened).
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let (times, flags, values) = columns(batch, self.row)?;
        for i in 0..batch.num_rows() {
            self.row += 1;
            let row = self.row;
            for (name, column) in [("utc_time", &times as &dyn Array), ("flags", &flags)] {
                if column.is_null(i) {
                    return Err(row_error(row, format!("{name} is null")));
                }
            }
            let time = times.value(i);
            if let Some(last) = self.last
                && time <= last
            {
                return Err(row_error(
                    row,
                    if time == last {
                        format!("{} repeats the previous row's timestamp", show_time(time))
                    } else {
                        format!(
                            "{} is before the previous row's {}: rows must be sorted by time",
                            show_time(time),
                            show_time(last)
                        )
                    },
                ));
            }
            if let Some(start) = self.start
                && time < start
            {
                return Err(row_error(
                    row,
                    format!(
                        "{} is before the interval's start {}",
                        show_time(time),
                        show_time(start)
                    ),
                ));
            }
            if let Some(end) = self.end
                && time >= end
            {
                return Err(row_error(
                    row,
                    format!(
                        "{} is at or after the interval's end {}",
                        show_time(time),
                        show_time(end)
                    ),
                ));
            }
            if !self.grid.holds(time) {
                return Err(row_error(
                    row,
                    format!(
                        "{} is not on the series' {} grid{}",
                        show_time(time),
                        self.grid.resolution.describe(),
                        if self.grid.utc {
                            String::new()
                        } else {
                            format!(
                                " in {}",
                                self.grid.zone.iana_name().unwrap_or("its time zone")
                            )
                        }
                    ),
                ));
            }
            self.first.get_or_insert(time);
            self.last = Some(time);
            // A null value is a missing point, as pandas and pyarrow
            // spell one: stored as NaN with the MISSING flag, which is how
            // reads give it back (docs/data.md).
            let (flag, value) = if values.is_null(i) {
                (flags.value(i) | PointFlag::Missing as u32, f64::NAN)
            } else {
                (flags.value(i), values.value(i))
            };
            self.pending.push(time, flag, value);
            if self.pending.len() == CHUNK_POINTS {
                self.flush()?;
            }
        }
        Ok(())
    }

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

    /// Writes what is pending, deletes the rest of the interval and tidies
    /// the chunks at its edges.
    pub fn finish(mut self) -> Result<WriteSummary> {
        self.flush()?;
        let (Some(start), Some(end)) = (
            self.start.or(self.first),
            self.end.or(self.last.map(|t| t + 1)),
        ) else {
            return Err(Error::invalid_argument(
                "an empty table writes nothing unless start and end name the interval to delete",
            ));
        };
        let from = self.cleared_to.unwrap_or(start);
        self.summary.deleted += clear(self.conn, from, end)?;
        compact(self.conn, start, end)?;
        self.summary.start_ms = start;
        self.summary.end_ms = end;
        Ok(self.summary)
    }
}
