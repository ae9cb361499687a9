//! The time-series model every backend shares: a series' definition
//! (resolution, curve, unit, time zone) and the grid its timestamps sit on,
//! how a batch of points is checked, and what reads and writes report.

use crate::error::{Error, Result};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type};
use arrow_array::{
    Array, ArrayRef, Float64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use arrow_schema::{DataType, TimeUnit};
use busbar_proto::v1::PointFlag;

/// The schema of every table of points (shared with the client).
pub use busbar_types::POINTS_SCHEMA;

/// How far apart a series' points are, and how values between them are
/// read: the proto's enums.
pub use busbar_types::{Curve, Resolution};

/// What a resolution means to the grid and to messages.
pub trait ResolutionGrid {
    /// In messages: "hourly", "15-minute".
    fn describe(self) -> &'static str;
    /// The grid step of sub-daily resolutions, in milliseconds.
    fn step_ms(self) -> Option<i64>;
}

impl ResolutionGrid for Resolution {
    fn describe(self) -> &'static str {
        match self {
            Resolution::Unspecified => "unspecified",
            Resolution::Breakpoint => "breakpoint",
            Resolution::Min1 => "1-minute",
            Resolution::Min5 => "5-minute",
            Resolution::Min10 => "10-minute",
            Resolution::Min15 => "15-minute",
            Resolution::Min30 => "30-minute",
            Resolution::Hour => "hourly",
            Resolution::Day => "daily",
            Resolution::Week => "weekly",
            Resolution::Month => "monthly",
            Resolution::Year => "yearly",
        }
    }

    // Inline, like the two below: a write checks every point against the
    // grid, and across modules the call itself cost a write ~10%.
    #[inline]
    fn step_ms(self) -> Option<i64> {
        let minutes = match self {
            Resolution::Min1 => 1,
            Resolution::Min5 => 5,
            Resolution::Min10 => 10,
            Resolution::Min15 => 15,
            Resolution::Min30 => 30,
            Resolution::Hour => 60,
            _ => return None,
        };
        Some(minutes * 60_000)
    }
}

/// A series' definition (one definition with the client's).
pub use busbar_types::SeriesSpec;

/// The time zone a definition names, checked: UTC when it names none.
pub fn time_zone_of(spec: &SeriesSpec) -> Result<jiff::tz::TimeZone> {
    match &spec.time_zone {
        None => Ok(jiff::tz::TimeZone::UTC),
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
            Error::invalid_argument(format!(
                "unknown time zone {name:?}: use an IANA name such as \"Europe/Oslo\""
            ))
        }),
    }
}

/// The grid a series' timestamps must sit on.
pub(crate) struct Grid {
    pub(crate) resolution: Resolution,
    pub(crate) zone: jiff::tz::TimeZone,
    pub(crate) utc: bool,
}

impl Grid {
    pub(crate) fn new(spec: &SeriesSpec) -> Result<Grid> {
        Ok(Grid {
            resolution: spec.resolution,
            utc: spec.time_zone.is_none(),
            zone: time_zone_of(spec)?,
        })
    }

    /// Milliseconds of local wall-clock time since the epoch, for `ms` UTC.
    #[inline]
    fn local_ms(&self, ms: i64) -> Option<i64> {
        if self.utc {
            return Some(ms);
        }
        let instant = jiff::Timestamp::from_millisecond(ms).ok()?;
        let offset = self.zone.to_offset(instant);
        Some(ms + i64::from(offset.seconds()) * 1000)
    }

    #[inline]
    pub(crate) fn holds(&self, ms: i64) -> bool {
        const DAY: i64 = 86_400_000;
        if self.resolution == Resolution::Breakpoint {
            return true;
        }
        let Some(local) = self.local_ms(ms) else {
            return false;
        };
        if let Some(step) = self.resolution.step_ms() {
            return local.rem_euclid(step) == 0;
        }
        if local.rem_euclid(DAY) != 0 {
            return false;
        }
        let day = local.div_euclid(DAY);
        match self.resolution {
            Resolution::Day => true,
            // 1970-01-01 was a Thursday; weeks start on Monday.
            Resolution::Week => (day + 3).rem_euclid(7) == 0,
            Resolution::Month | Resolution::Year => {
                let Ok(date) = jiff::civil::Date::new(1970, 1, 1)
                    .and_then(|epoch| epoch.checked_add(jiff::Span::new().days(day)))
                else {
                    return false;
                };
                date.day() == 1 && (self.resolution == Resolution::Month || date.month() == 1)
            }
            _ => true,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteSummary {
    pub written: u64,
    pub deleted: u64,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A series' extent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extent {
    pub points: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// What every backend checks of a write, row by row, before it stores
/// anything: the interval, the schema, nulls, order, the interval's bounds
/// and the grid. Backends differ only in where the checked points go.
pub(crate) struct WriteCheck {
    grid: Grid,
    start: Option<i64>,
    end: Option<i64>,
    first: Option<i64>,
    last: Option<i64>,
    row: u64,
}

impl WriteCheck {
    /// Refuses an empty interval `[start, end)` before any point is read.
    pub(crate) fn new(spec: &SeriesSpec, start: Option<i64>, end: Option<i64>) -> Result<Self> {
        if let (Some(start), Some(end)) = (start, end)
            && start >= end
        {
            return Err(Error::invalid_argument(format!(
                "the interval [{}, {}) is empty: start must be before end",
                show_time(start),
                show_time(end)
            )));
        }
        Ok(WriteCheck {
            grid: Grid::new(spec)?,
            start,
            end,
            first: None,
            last: None,
            row: 0,
        })
    }

    /// The interval's start, when the write names one.
    pub(crate) fn start(&self) -> Option<i64> {
        self.start
    }

    /// Checks one batch (any timestamp unit; naive timestamps are UTC;
    /// integer flags and numeric values are widened) and hands each point
    /// to `point` as it is stored: time, flags, value. The first bad row
    /// fails the write, and the caller rolls its transaction back.
    // Inline: the per-point closure is the backend's, and a call per point
    // across modules costs a write about 10% (see `step_ms`).
    #[inline]
    pub(crate) fn push(
        &mut self,
        batch: &RecordBatch,
        mut point: impl FnMut(i64, u32, f64) -> Result<()>,
    ) -> Result<()> {
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
            point(time, flag, value)?;
        }
        Ok(())
    }

    /// The interval the write replaces, once every point is in: the one it
    /// named, or from its first point to just after its last.
    pub(crate) fn interval(&self) -> Result<(i64, i64)> {
        match (
            self.start.or(self.first),
            self.end.or(self.last.map(|t| t + 1)),
        ) {
            (Some(start), Some(end)) => Ok((start, end)),
            _ => Err(Error::invalid_argument(
                "an empty table writes nothing unless start and end name the interval to delete",
            )),
        }
    }
}

pub(crate) fn row_error(row: u64, what: impl std::fmt::Display) -> Error {
    Error::invalid_argument(format!("row {row}: {what}; nothing was written"))
}

pub use busbar_types::show_time;

/// A time as users write it (see [`busbar_types::parse_time`]), as epoch ms.
pub fn parse_time(text: &str) -> Result<i64> {
    busbar_types::parse_time(text).map_err(|bad| Error::invalid_argument(bad.to_string()))
}

pub(crate) type Columns = (TimestampMillisecondArray, UInt32Array, Float64Array);

/// Checks a batch of points as a write does (schema, types, casts), for the
/// fuzz targets; returns its row count.
#[doc(hidden)]
pub fn check_points(batch: &RecordBatch) -> Result<usize> {
    columns(batch, 0).map(|(times, _, _)| times.len())
}

/// The three columns of a batch as the stored types, or an error naming what
/// is wrong with the schema.
pub(crate) fn columns(batch: &RecordBatch, rows_before: u64) -> Result<Columns> {
    let schema = batch.schema();
    let want = "utc_time: timestamp[ms, tz=UTC], flags: uint32, value: float64";
    if schema.fields().len() != 3 {
        return Err(Error::invalid_argument(format!(
            "the table has {} columns; points have three: {want}",
            schema.fields().len()
        )));
    }
    let column = |name: &str| -> Result<&ArrayRef> {
        batch.column_by_name(name).ok_or_else(|| {
            Error::invalid_argument(format!(
                "the table has no column {name:?} (it has {}); points have {want}",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let times = column("utc_time")?;
    let flags = column("flags")?;
    let values = column("value")?;
    let times = match times.data_type() {
        // Arrow timestamps count from the epoch in UTC whether or not they
        // carry a zone, so naive ones are UTC and aware ones need no shift.
        DataType::Timestamp(unit, _) => {
            let per_ms: i64 = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 1,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1_000_000,
            };
            let raw = arrow_cast::cast(times, &DataType::Int64)
                .map_err(|e| Error::invalid_argument(format!("utc_time: {e}")))?;
            let raw = raw.as_primitive::<arrow_array::types::Int64Type>();
            let mut out = Vec::with_capacity(raw.len());
            for (i, value) in raw.values().iter().enumerate() {
                let ms = match per_ms {
                    0 => value.checked_mul(1000),
                    1 => Some(*value),
                    n if value % n == 0 || raw.is_null(i) => Some(value / n),
                    _ => {
                        return Err(row_error(
                            rows_before + i as u64 + 1,
                            "utc_time has a fraction of a millisecond; timestamps are stored in whole milliseconds",
                        ));
                    }
                };
                out.push(ms.ok_or_else(|| {
                    row_error(rows_before + i as u64 + 1, "utc_time is out of range")
                })?);
            }
            TimestampMillisecondArray::new(out.into(), raw.nulls().cloned())
        }
        other => {
            return Err(Error::invalid_argument(format!(
                "utc_time is {other}; it must be a timestamp (points have {want})"
            )));
        }
    };
    let widen = |array: &ArrayRef,
                 name: &str,
                 to: &DataType,
                 ok: fn(&DataType) -> bool|
     -> Result<ArrayRef> {
        if !ok(array.data_type()) {
            return Err(Error::invalid_argument(format!(
                "{name} is {}; points have {want}",
                array.data_type()
            )));
        }
        let safe = arrow_cast::CastOptions {
            safe: false,
            ..Default::default()
        };
        arrow_cast::cast_with_options(array, to, &safe)
            .map_err(|e| Error::invalid_argument(format!("{name}: {e}")))
    };
    let flags = widen(flags, "flags", &DataType::UInt32, DataType::is_integer)?;
    let values = widen(values, "value", &DataType::Float64, DataType::is_numeric)?;
    Ok((
        times,
        flags.as_primitive::<UInt32Type>().clone(),
        values.as_primitive::<Float64Type>().clone(),
    ))
}
