//! The chunk format: a series' points in rows of up to [`CHUNK_POINTS`]
//! points, each holding three little-endian column blobs (or, for times on
//! one step and flags all the same, that rule), keyed by the first
//! timestamp; and the operations on them a write and a read need.

use super::*;

/// Points per stored chunk (about 640 KiB of column data when full).
pub const CHUNK_POINTS: usize = 32 * 1024;

/// Columns of points, in time order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Points {
    pub times: Vec<i64>,
    pub flags: Vec<u32>,
    pub values: Vec<f64>,
}

impl Points {
    #[inline]
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    // Inline: a write pushes every point from write.rs, another module.
    #[inline]
    pub(crate) fn push(&mut self, time: i64, flags: u32, value: f64) {
        self.times.push(time);
        self.flags.push(flags);
        self.values.push(value);
    }

    fn extend_from(&mut self, other: &Points, range: std::ops::Range<usize>) {
        self.times.extend_from_slice(&other.times[range.clone()]);
        self.flags.extend_from_slice(&other.flags[range.clone()]);
        self.values.extend_from_slice(&other.values[range]);
    }

    fn slice(&self, range: std::ops::Range<usize>) -> Points {
        let mut points = Points::default();
        points.extend_from(self, range);
        points
    }

    /// The points as a record batch of [`POINTS_SCHEMA`].
    #[cfg(test)]
    pub fn into_batch(self) -> RecordBatch {
        use crate::timeseries::model::POINTS_SCHEMA;
        use arrow_array::{ArrayRef, Float64Array, TimestampMillisecondArray, UInt32Array};
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMillisecondArray::from(self.times).with_timezone("UTC")),
            Arc::new(UInt32Array::from(self.flags)),
            Arc::new(Float64Array::from(self.values)),
        ];
        RecordBatch::try_new(POINTS_SCHEMA.clone(), columns)
            .expect("three equal columns of the points schema")
    }
}

pub(super) fn encode<T: Copy, const N: usize>(values: &[T], to_bytes: fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * N);
    for value in values {
        out.extend_from_slice(&to_bytes(*value));
    }
    out
}

pub(super) fn decode<T, const N: usize>(bytes: &[u8], from_bytes: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|piece| from_bytes(piece.try_into().expect("chunks_exact gives N bytes")))
        .collect()
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::internal(format!("time-series storage is damaged: {what}"))
}

/// One stored chunk, decoded, from a row of `CHUNK_COLUMNS`.
pub(super) fn read_chunk(row: &rusqlite::Row<'_>) -> Result<(i64, Points)> {
    let (start, last): (i64, i64) = (row.get(0)?, row.get(1)?);
    let count = usize::try_from(row.get::<_, i64>(2)?)
        .ok()
        .filter(|&n| n <= CHUNK_POINTS)
        .ok_or_else(|| corrupt(&format!("chunk {start} has a point count out of range")))?;
    let uneven = || corrupt(&format!("chunk {start} has uneven columns"));
    let blob = |i: usize| -> Result<&[u8]> { row.get_ref(i)?.as_blob().map_err(|_| uneven()) };
    // A column kept as a rule has an empty blob (see `insert_chunk`).
    let times = match row.get::<_, Option<i64>>(6)? {
        Some(step) if blob(3)?.is_empty() && checked_step(start, count, step).is_some() => {
            (0..count as i64).map(|i| start + i * step).collect()
        }
        _ => decode(blob(3)?, i64::from_le_bytes),
    };
    let flags = match row.get::<_, Option<i64>>(7)? {
        Some(flags) if blob(4)?.is_empty() => {
            vec![u32::try_from(flags).map_err(|_| uneven())?; count]
        }
        _ => decode(blob(4)?, u32::from_le_bytes),
    };
    let values = decode(blob(5)?, f64::from_le_bytes);
    if (times.first(), times.last()) != (Some(&start), Some(&last))
        || [times.len(), flags.len(), values.len()] != [count; 3]
    {
        return Err(uneven());
    }
    Ok((
        start,
        Points {
            times,
            flags,
            values,
        },
    ))
}

/// Whether `step` makes `count` times from `start` without overflowing:
/// the last time, when it does.
pub(super) fn checked_step(start: i64, count: usize, step: i64) -> Option<i64> {
    if step < 0 || (count > 1 && step == 0) {
        return None;
    }
    (count.max(1) as i64 - 1)
        .checked_mul(step)
        .and_then(|span| start.checked_add(span))
}

/// The columns of a chunk row that [`read_chunk`] decodes.
pub(super) const CHUNK_COLUMNS: &str =
    "start_ms, last_ms, count, times, flags, vals, step_ms, same_flags";

/// The step between the times when it is one step throughout (0 for a
/// single point), for a chunk's `step_ms`.
pub(super) fn regular_step(times: &[i64]) -> Option<i64> {
    let step = match times {
        [] => return None,
        [_] => return Some(0),
        [first, second, ..] => second.checked_sub(*first)?,
    };
    times
        .windows(2)
        .all(|pair| pair[1].checked_sub(pair[0]) == Some(step))
        .then_some(step)
}

/// The flags every point has, when they all have the same, for a chunk's
/// `same_flags`.
pub(super) fn same_flags(flags: &[u32]) -> Option<u32> {
    let first = *flags.first()?;
    flags.iter().all(|&f| f == first).then_some(first)
}

/// Stores a chunk. Times on one step and flags that are all the same are
/// kept as that rule (`step_ms`, `same_flags`) with an empty blob: a regular
/// series without flags stores 8 bytes per point instead of 20.
pub(super) fn insert_chunk(conn: &Connection, points: &Points) -> Result<()> {
    if points.is_empty() {
        return Ok(());
    }
    let step = regular_step(&points.times);
    let flags = same_flags(&points.flags);
    let unless = |rule: bool, blob: fn(&Points) -> Vec<u8>| {
        if rule { Vec::new() } else { blob(points) }
    };
    conn.prepare_cached(
        "INSERT INTO chunks (start_ms, last_ms, count, times, flags, vals, step_ms, same_flags)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        points.times[0],
        points.times[points.len() - 1],
        points.len() as i64,
        unless(step.is_some(), |p| encode(&p.times, i64::to_le_bytes)),
        unless(flags.is_some(), |p| encode(&p.flags, u32::to_le_bytes)),
        encode(&points.values, f64::to_le_bytes),
        step,
        flags,
    ])?;
    Ok(())
}

pub(super) fn delete_chunk(conn: &Connection, start: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM chunks WHERE start_ms = ?1")?
        .execute([start])?;
    Ok(())
}

/// Chunks that may hold points in `[from, to)`, oldest first: the last chunk
/// starting at or before `from`, and every chunk starting before `to` after it.
pub(super) fn chunks_between(conn: &Connection, from: i64, to: i64) -> Result<Vec<(i64, Points)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {CHUNK_COLUMNS} FROM chunks
         WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms <= ?1), ?1)
           AND start_ms < ?2 ORDER BY start_ms"
    ))?;
    let mut rows = stmt.query([from, to])?;
    let mut chunks = Vec::new();
    while let Some(row) = rows.next()? {
        chunks.push(read_chunk(row)?);
    }
    Ok(chunks)
}

/// Deletes the points in `[from, to)`; returns how many there were.
pub(super) fn clear(conn: &Connection, from: i64, to: i64) -> Result<u64> {
    if from >= to {
        return Ok(0);
    }
    // Chunks wholly inside go without reading their blobs; only the (at most
    // two) chunks across an edge are decoded and split.
    let extents: Vec<(i64, i64, u64)> = conn
        .prepare_cached(
            "SELECT start_ms, last_ms, count FROM chunks
             WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms <= ?1), ?1)
               AND start_ms < ?2 ORDER BY start_ms",
        )?
        .query_map([from, to], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut deleted = 0;
    for (start, last, count) in extents {
        if last < from {
            continue;
        }
        if start >= from && last < to {
            delete_chunk(conn, start)?;
            deleted += count;
            continue;
        }
        let Some((_, points)) = chunks_between(conn, start, start + 1)?.pop() else {
            continue;
        };
        let lo = points.times.partition_point(|&t| t < from);
        let hi = points.times.partition_point(|&t| t < to);
        if lo == hi {
            continue;
        }
        deleted += (hi - lo) as u64;
        delete_chunk(conn, start)?;
        insert_chunk(conn, &points.slice(0..lo))?;
        insert_chunk(conn, &points.slice(hi..points.len()))?;
    }
    Ok(deleted)
}

/// Merges runs of neighbouring small chunks around `[from, to]`, so that many
/// small writes do not leave the series in many tiny chunks.
pub(super) fn compact(conn: &Connection, from: i64, to: i64) -> Result<()> {
    let sizes: Vec<(i64, usize)> = conn
        .prepare_cached(
            "SELECT start_ms, count FROM chunks
             WHERE start_ms >= coalesce((SELECT max(start_ms) FROM chunks WHERE start_ms < ?1), ?1)
               AND start_ms <= coalesce((SELECT min(start_ms) FROM chunks WHERE start_ms > ?2), ?2)
             ORDER BY start_ms",
        )?
        .query_map([from, to], |row| {
            Ok((row.get(0)?, row.get::<_, i64>(1)? as usize))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut group: Vec<(i64, usize)> = Vec::new();
    let merge = |group: &mut Vec<(i64, usize)>| -> Result<()> {
        if group.len() > 1 {
            let first = group[0].0;
            let last = group[group.len() - 1].0;
            let mut merged = Points::default();
            for (start, points) in chunks_between(conn, first, last + 1)? {
                merged.extend_from(&points, 0..points.len());
                delete_chunk(conn, start)?;
            }
            insert_chunk(conn, &merged)?;
        }
        group.clear();
        Ok(())
    };
    for chunk in sizes {
        let total: usize = group.iter().map(|(_, n)| n).sum();
        if total + chunk.1 > CHUNK_POINTS {
            merge(&mut group)?;
        }
        group.push(chunk);
    }
    merge(&mut group)
}

pub fn extent(conn: &Connection) -> Result<Extent> {
    Ok(conn.query_row(
        "SELECT coalesce(sum(count), 0), min(start_ms), max(last_ms) FROM chunks",
        [],
        |row| {
            Ok(Extent {
                points: row.get::<_, i64>(0)? as u64,
                first_ms: row.get(1)?,
                last_ms: row.get(2)?,
            })
        },
    )?)
}
