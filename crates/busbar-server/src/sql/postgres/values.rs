//! Values between Busbar and PostgreSQL: parameters out, result rows into
//! Arrow record batches.
//!
//! Parameters are typed by their value, the way literals are: integers are
//! `bigint`, reals `double precision`, booleans `boolean`, bytes `bytea`,
//! timestamps `timestamptz`; text and NULL are left untyped (sent as text),
//! so PostgreSQL reads them as the column or operator needs (`uuid`,
//! `jsonb`, `date`, …), exactly like a quoted literal.
//!
//! Results: each PostgreSQL type maps to one Arrow type (docs/cluster.md
//! lists them); a column of a type not listed is refused with a message
//! saying to cast it.

use crate::error::{Error, Result};
use crate::sql::SqlParam;
use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::{BufMut, BytesMut};
use std::sync::Arc;
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_US: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// A parameter as PostgreSQL receives it.
#[derive(Debug)]
pub struct Param<'a>(pub &'a SqlParam);

impl Param<'_> {
    /// The type the parameter is declared with when the statement is prepared.
    pub fn declared(&self) -> Type {
        match self.0 {
            SqlParam::Null | SqlParam::Text(_) => Type::UNKNOWN,
            SqlParam::Integer(_) => Type::INT8,
            SqlParam::Real(_) => Type::FLOAT8,
            SqlParam::Blob(_) => Type::BYTEA,
            SqlParam::Boolean(_) => Type::BOOL,
            SqlParam::TimestampMs(_) => Type::TIMESTAMPTZ,
        }
    }
}

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            SqlParam::Null => return Ok(IsNull::Yes),
            SqlParam::Integer(value) => out.put_i64(*value),
            SqlParam::Real(value) => out.put_f64(*value),
            SqlParam::Text(text) => out.extend_from_slice(text.as_bytes()),
            SqlParam::Blob(bytes) => out.extend_from_slice(bytes),
            SqlParam::Boolean(value) => out.put_u8(u8::from(*value)),
            SqlParam::TimestampMs(ms) => {
                let us = ms
                    .checked_mul(1000)
                    .and_then(|us| us.checked_sub(PG_EPOCH_US))
                    .ok_or("the timestamp is out of PostgreSQL's range")?;
                out.put_i64(us)
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> tokio_postgres::types::Format {
        // Text goes as text so PostgreSQL parses it as whatever type the
        // statement gave the parameter.
        match self.0 {
            SqlParam::Text(_) => tokio_postgres::types::Format::Text,
            _ => tokio_postgres::types::Format::Binary,
        }
    }

    to_sql_checked!();
}

/// A value's bytes as PostgreSQL sent them (binary format), decoded below.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The Arrow type a PostgreSQL type is returned as.
pub fn arrow_type(ty: &Type) -> Option<DataType> {
    Some(match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::BYTEA => DataType::Binary,
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::DATE => DataType::Date32,
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UNKNOWN
        | Type::CHAR
        | Type::JSON
        | Type::JSONB
        | Type::UUID
        | Type::NUMERIC
        | Type::VOID => DataType::Utf8,
        _ => return None,
    })
}

/// The Arrow schema of a statement's columns, or why one cannot be returned.
pub fn schema(columns: &[tokio_postgres::Column]) -> Result<SchemaRef> {
    let fields = columns
        .iter()
        .map(|column| {
            let kind = arrow_type(column.type_()).ok_or_else(|| {
                Error::invalid_argument(format!(
                    "column {:?} is of PostgreSQL type {}, which Busbar does not return yet; \
                     cast it in the statement ({}::text)",
                    column.name(),
                    column.type_().name(),
                    column.name()
                ))
            })?;
            Ok(Field::new(column.name(), kind, true))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// One Arrow column being filled from PostgreSQL values.
enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Bytes(BinaryBuilder),
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder, Option<Arc<str>>),
    Date(Date32Builder),
}

fn be<const N: usize>(raw: &[u8]) -> Result<[u8; N]> {
    raw.try_into().map_err(|_| {
        Error::internal(format!(
            "PostgreSQL sent {} bytes for a {N}-byte value",
            raw.len()
        ))
    })
}

impl Builder {
    fn new(kind: &DataType) -> Builder {
        match kind {
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Int16 => Builder::I16(Int16Builder::new()),
            DataType::Int32 => Builder::I32(Int32Builder::new()),
            DataType::Int64 => Builder::I64(Int64Builder::new()),
            DataType::Float32 => Builder::F32(Float32Builder::new()),
            DataType::Float64 => Builder::F64(Float64Builder::new()),
            DataType::Binary => Builder::Bytes(BinaryBuilder::new()),
            DataType::Timestamp(_, zone) => {
                Builder::Time(TimestampMicrosecondBuilder::new(), zone.clone())
            }
            DataType::Date32 => Builder::Date(Date32Builder::new()),
            _ => Builder::Text(StringBuilder::new()),
        }
    }

    /// Appends one value (`None` is NULL) of PostgreSQL type `ty`.
    fn push(&mut self, ty: &Type, raw: Option<&[u8]>) -> Result<()> {
        let Some(raw) = raw else {
            match self {
                Builder::Bool(b) => b.append_null(),
                Builder::I16(b) => b.append_null(),
                Builder::I32(b) => b.append_null(),
                Builder::I64(b) => b.append_null(),
                Builder::F32(b) => b.append_null(),
                Builder::F64(b) => b.append_null(),
                Builder::Bytes(b) => b.append_null(),
                Builder::Text(b) => b.append_null(),
                Builder::Time(b, _) => b.append_null(),
                Builder::Date(b) => b.append_null(),
            }
            return Ok(());
        };
        match self {
            Builder::Bool(b) => b.append_value(be::<1>(raw)?[0] != 0),
            Builder::I16(b) => b.append_value(i16::from_be_bytes(be(raw)?)),
            Builder::I32(b) => b.append_value(i32::from_be_bytes(be(raw)?)),
            Builder::I64(b) if *ty == Type::OID => {
                b.append_value(i64::from(u32::from_be_bytes(be(raw)?)))
            }
            Builder::I64(b) => b.append_value(i64::from_be_bytes(be(raw)?)),
            Builder::F32(b) => b.append_value(f32::from_be_bytes(be(raw)?)),
            Builder::F64(b) => b.append_value(f64::from_be_bytes(be(raw)?)),
            Builder::Bytes(b) => b.append_value(raw),
            Builder::Time(b, _) => {
                b.append_value(i64::from_be_bytes(be(raw)?).saturating_add(PG_EPOCH_US))
            }
            Builder::Date(b) => {
                b.append_value(i32::from_be_bytes(be(raw)?).saturating_add(PG_EPOCH_DAYS))
            }
            Builder::Text(b) => match *ty {
                Type::UUID => b.append_value(uuid_text(raw)?),
                Type::NUMERIC => b.append_value(numeric_text(raw)?),
                // jsonb's binary form is a version byte (1) and the text.
                Type::JSONB => b.append_value(utf8(raw.get(1..).unwrap_or_default())?),
                Type::CHAR => b.append_value(String::from_utf8_lossy(raw)),
                _ => b.append_value(utf8(raw)?),
            },
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Time(b, zone) => Arc::new(b.finish().with_timezone_opt(zone.clone())),
            Builder::Date(b) => Arc::new(b.finish()),
        }
    }
}

fn utf8(raw: &[u8]) -> Result<&str> {
    std::str::from_utf8(raw).map_err(|_| {
        Error::internal(
            "PostgreSQL sent text that is not UTF-8 (the database's encoding should be UTF8)",
        )
    })
}

fn uuid_text(raw: &[u8]) -> Result<String> {
    Ok(uuid::Uuid::from_bytes(be(raw)?).hyphenated().to_string())
}

/// A `numeric` in PostgreSQL's binary form (base-10000 digits, a weight, a
/// sign, a display scale) as exact decimal text.
fn numeric_text(raw: &[u8]) -> Result<String> {
    let field = |at: usize| -> Result<i16> {
        Ok(i16::from_be_bytes(be(raw
            .get(at..at + 2)
            .unwrap_or_default())?))
    };
    let (count, weight, sign, scale) = (field(0)?, field(2)?, field(4)? as u16, field(6)?);
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let digits: Vec<i16> = (0..count.max(0) as usize)
        .map(|i| field(8 + 2 * i))
        .collect::<Result<_>>()?;
    let digit = |index: i32| -> i16 {
        usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == 0x4000 {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit(0).to_string());
        for index in 1..=i32::from(weight) {
            text.push_str(&format!("{:04}", digit(index)));
        }
    }
    if scale > 0 {
        let mut fraction = String::new();
        let groups = (i32::from(scale) + 3) / 4;
        for group in 0..groups {
            fraction.push_str(&format!("{:04}", digit(i32::from(weight) + 1 + group)));
        }
        fraction.truncate(scale as usize);
        text.push('.');
        text.push_str(&fraction);
    }
    Ok(text)
}

/// Fills record batches of `schema` from rows, a batch at a time.
pub struct Batches {
    schema: SchemaRef,
    types: Vec<Type>,
    builders: Vec<Builder>,
    pub rows: usize,
    pub bytes: usize,
}

impl Batches {
    pub fn new(schema: SchemaRef, columns: &[tokio_postgres::Column]) -> Batches {
        Batches {
            builders: schema
                .fields()
                .iter()
                .map(|f| Builder::new(f.data_type()))
                .collect(),
            types: columns.iter().map(|c| c.type_().clone()).collect(),
            schema,
            rows: 0,
            bytes: 0,
        }
    }

    pub fn push(&mut self, row: &tokio_postgres::Row) -> Result<()> {
        for (index, (builder, ty)) in self.builders.iter_mut().zip(&self.types).enumerate() {
            let raw = row
                .try_get::<_, Option<Raw<'_>>>(index)
                .map_err(|e| Error::internal(format!("reading column {index}: {e}")))?
                .map(|raw| raw.0);
            self.bytes += raw.map_or(1, <[u8]>::len);
            builder.push(ty, raw)?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Whether the batch being filled should go out now.
    pub fn full(&self) -> bool {
        self.rows >= crate::sql::BATCH_ROWS || self.bytes >= crate::sql::BATCH_BYTES
    }

    /// The rows pushed since the last take, as one batch.
    pub fn take(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::internal(format!("building a record batch: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(count: i16, weight: i16, sign: u16, scale: i16, digits: &[i16]) -> Vec<u8> {
        let mut raw = Vec::new();
        for field in [count, weight, sign as i16, scale].iter().chain(digits) {
            raw.extend_from_slice(&field.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numerics_read_exactly() {
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, 2, &[12, 3400])).unwrap(),
            "12.34"
        );
        assert_eq!(
            numeric_text(&numeric(2, 1, 0x4000, 0, &[1, 2])).unwrap(),
            "-10002"
        );
        assert_eq!(
            numeric_text(&numeric(1, -2, 0, 8, &[1])).unwrap(),
            "0.00000001"
        );
        assert_eq!(numeric_text(&numeric(0, 0, 0, 3, &[])).unwrap(), "0.000");
        assert_eq!(
            numeric_text(&numeric(1, 2, 0, 0, &[5])).unwrap(),
            "500000000"
        );
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(
            numeric_text(&[0, 1]).is_err(),
            "truncated input is an error"
        );
    }
}
