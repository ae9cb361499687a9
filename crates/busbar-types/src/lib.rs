//! What a Busbar client and node agree on beyond the proto, defined once for
//! both ends: the Arrow schema of time-series points, a series' definition,
//! the values a SQL statement binds, and how users write times.

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::{Arc, LazyLock};

/// The schema of every table of points, read or written: `utc_time`
/// (timestamp ms, UTC), `flags` (u32, `busbar.v1.PointFlag` bits) and
/// `value` (f64), none nullable.
pub static POINTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new(
            "utc_time",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("flags", DataType::UInt32, false),
        Field::new("value", DataType::Float64, false),
    ]))
});

/// How far apart a series' points are, and how values between them read.
pub use busbar_proto::v1::{Curve, Resolution};

/// A series' definition, fixed at creation: how far apart points are, their
/// unit, how values between points are read, and the time zone its
/// calendar follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesSpec {
    pub resolution: Resolution,
    pub unit: String,
    pub curve: Curve,
    /// IANA zone, e.g. "Europe/Oslo"; `None` is UTC.
    pub time_zone: Option<String>,
}

impl SeriesSpec {
    pub fn new(resolution: Resolution) -> SeriesSpec {
        SeriesSpec {
            resolution,
            unit: String::new(),
            curve: Curve::Staircase,
            time_zone: None,
        }
    }

    pub fn unit(mut self, unit: impl Into<String>) -> SeriesSpec {
        self.unit = unit.into();
        self
    }

    pub fn curve(mut self, curve: Curve) -> SeriesSpec {
        self.curve = curve;
        self
    }

    pub fn time_zone(mut self, zone: impl Into<String>) -> SeriesSpec {
        self.time_zone = Some(zone.into());
        self
    }

    /// As the protocol carries it.
    pub fn to_proto(&self) -> busbar_proto::v1::SeriesSpec {
        busbar_proto::v1::SeriesSpec {
            resolution: self.resolution as i32,
            unit: self.unit.clone(),
            curve: self.curve as i32,
            time_zone: self.time_zone.clone().unwrap_or_default(),
        }
    }
}

/// One value bound to a SQL statement's parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlParam {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
    Boolean(bool),
    /// Epoch milliseconds, UTC.
    TimestampMs(i64),
}

macro_rules! param_from {
    ($($t:ty => $variant:ident $(via $conv:expr)?),* $(,)?) => {
        $(impl From<$t> for SqlParam {
            fn from(value: $t) -> SqlParam {
                SqlParam::$variant($( $conv )?(value))
            }
        })*
    };
}

param_from! {
    i64 => Integer,
    i32 => Integer via i64::from,
    f64 => Real,
    String => Text,
    &str => Text via String::from,
    bool => Boolean,
    Vec<u8> => Blob,
}

impl<T: Into<SqlParam>> From<Option<T>> for SqlParam {
    fn from(value: Option<T>) -> SqlParam {
        value.map_or(SqlParam::Null, Into::into)
    }
}

/// A time text that is none of the forms [`parse_time`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTime(pub String);

impl std::fmt::Display for BadTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bad time {:?}: use RFC 3339 such as 2026-03-29T01:00:00+02:00 or \
             2026-03-29T00:00:00Z (no offset means UTC), a date, or epoch milliseconds",
            self.0
        )
    }
}

impl std::error::Error for BadTime {}

/// A time as users write it: RFC 3339 / ISO 8601 with an offset, a date-time
/// without one (UTC), a date (midnight UTC), or epoch milliseconds; as epoch
/// milliseconds.
pub fn parse_time(text: &str) -> Result<i64, BadTime> {
    let text = text.trim();
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(instant) = text.parse::<jiff::Timestamp>() {
        return Ok(instant.as_millisecond());
    }
    let naive = text.parse::<jiff::civil::DateTime>().or_else(|_| {
        text.parse::<jiff::civil::Date>()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    });
    naive
        .and_then(|t| t.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|zoned| zoned.timestamp().as_millisecond())
        .map_err(|_| BadTime(text.to_string()))
}

/// Epoch milliseconds as RFC 3339 in UTC (or "N ms" out of range).
pub fn show_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_written_form() {
        let at = 1_774_746_000_000; // 2026-03-29T01:00:00Z
        for text in [
            "1774746000000",
            "2026-03-29T01:00:00Z",
            "2026-03-29T03:00:00+02:00",
            "2026-03-29T01:00:00",
            " 2026-03-29T01:00:00Z ",
        ] {
            assert_eq!(parse_time(text), Ok(at), "{text}");
        }
        assert_eq!(parse_time("2026-03-29"), Ok(at - 3_600_000));
        let bad = parse_time("next tuesday").unwrap_err();
        assert!(bad.to_string().contains("bad time \"next tuesday\""));
        assert_eq!(show_time(at), "2026-03-29T01:00:00Z");
        assert_eq!(show_time(i64::MAX), format!("{} ms", i64::MAX));
    }

    #[test]
    fn parameters_from_plain_values() {
        assert_eq!(SqlParam::from(3_i32), SqlParam::Integer(3));
        assert_eq!(SqlParam::from("a"), SqlParam::Text("a".into()));
        assert_eq!(SqlParam::from(None::<f64>), SqlParam::Null);
        assert_eq!(SqlParam::from(b"x".to_vec()), SqlParam::Blob(b"x".to_vec()));
    }
}
