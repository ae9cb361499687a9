//! One statement on PostgreSQL: its parameters bound, run in one round
//! trip, its rows turned into bounded Arrow batches; and a keyed call's
//! outcome as it is kept and given again.

use super::calls::{first_word, sql_error};
use super::text;
use super::values::{self, Batches, Param};
use crate::calls::Replay;
use crate::error::{Error, Result};
use crate::sql::{Budget, Rows, SqlParam, SqlParams, SqlSummary};
use arrow_array::RecordBatch;
use futures::StreamExt;
use std::collections::HashMap;
use tokio_postgres::Client;

/// `sql` numbered for PostgreSQL, and its parameter values in order.
pub(super) fn bind(sql: &str, params: &SqlParams) -> Result<(String, Vec<SqlParam>)> {
    if !params.positional.is_empty() && !params.named.is_empty() {
        return Err(Error::invalid_argument(
            "pass parameters by position or by name, not both",
        ));
    }
    let (numbered, names) = text::number_names(sql)?;
    if names.is_empty() {
        if !params.named.is_empty() {
            return Err(Error::invalid_argument(
                "the statement has no :name parameters; PostgreSQL's positional ones are $1, $2, …",
            ));
        }
        let wanted = text::positional_count(sql)? as usize;
        if wanted != params.positional.len() {
            return Err(Error::invalid_argument(format!(
                "the statement takes {wanted} parameters ($1 … ${wanted}) but {} were given",
                params.positional.len()
            )));
        }
        return Ok((numbered, params.positional.clone()));
    }
    let given: HashMap<&str, &SqlParam> = params
        .named
        .iter()
        .map(|(name, value)| (name.trim_start_matches([':', '@', '$']), value))
        .collect();
    if let Some(unknown) = given.keys().find(|name| !names.iter().any(|n| n == *name)) {
        return Err(Error::invalid_argument(format!(
            "the statement has no parameter named {unknown:?}"
        )));
    }
    let values = names
        .iter()
        .map(|name| {
            given
                .get(name.as_str())
                .map(|v| (*v).clone())
                .ok_or_else(|| {
                    Error::invalid_argument(format!("no value given for parameter :{name}"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((numbered, values))
}

pub(super) async fn prepare(
    client: &Client,
    sql: &str,
    values: &[SqlParam],
) -> Result<tokio_postgres::Statement> {
    let declared: Vec<_> = values.iter().map(|v| Param(v).declared()).collect();
    client
        .prepare_typed(sql, &declared)
        .await
        .map_err(|e| sql_error(&e))
}

/// Where a statement's rows go.
pub(super) enum Sink<'a> {
    /// Nowhere: only what it changed counts.
    None,
    /// To the caller as they come.
    Send(&'a Rows),
    /// Kept, to go out once the call's idempotency key is settled.
    Keep(&'a mut Vec<RecordBatch>),
}

/// Whether a statement that returned no rows may still have columns (so
/// its empty result must carry a schema): writes without `RETURNING` and
/// statements that never return rows do not.
pub(super) fn may_have_columns(sql: &str) -> bool {
    let returning = sql.to_ascii_lowercase().contains("returning");
    match first_word(sql).as_str() {
        "insert" | "update" | "delete" | "merge" => returning,
        "create" | "alter" | "drop" | "set" | "reset" | "grant" | "revoke" | "comment"
        | "truncate" | "vacuum" | "analyze" | "do" | "lock" | "discard" | "listen" | "unlisten"
        | "notify" | "prepare" | "deallocate" | "refresh" | "security" | "cluster" | "reindex"
        | "checkpoint" | "load" => false,
        _ => true,
    }
}

/// A result's columns as a summary lists them: name, declared type, Arrow type.
pub(super) type Described = Vec<(String, String, arrow_schema::DataType)>;

/// The Arrow batches of a result and the summary's column list, from the
/// result's columns.
pub(super) fn result_of(columns: &[tokio_postgres::Column]) -> Result<(Batches, Described)> {
    let schema = values::schema(columns)?;
    let described = columns
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            (
                c.name().to_string(),
                c.type_().name().to_string(),
                f.data_type().clone(),
            )
        })
        .collect();
    Ok((Batches::new(schema, columns), described))
}

/// Runs one statement in one round trip (parse, bind and execute together,
/// parameters typed by their values), sending its rows to `sink` in bounded
/// batches. The first batch goes out even when empty: it carries the
/// schema (learnt, for an empty result, by describing the statement).
pub(super) async fn stream(
    client: &Client,
    sql: &str,
    values: &[SqlParam],
    mut sink: Sink<'_>,
    budget: &Budget,
) -> Result<SqlSummary> {
    let typed = values.iter().map(|v| (Param(v), Param(v).declared()));
    // Sent when first polled: a caller that starts this future beside
    // others (`run_one`) fixes the order on the wire by polling it first.
    let rows = client
        .query_typed_raw(sql, typed)
        .await
        .map_err(|e| sql_error(&e))?;
    tokio::pin!(rows);
    let mut summary = SqlSummary::default();
    let mut batches: Option<Batches> = None;
    let mut sent = 0usize;
    let mut send = async |batches: &mut Batches, sink: &mut Sink<'_>| -> Result<()> {
        let batch = batches.take()?;
        sent = sent.saturating_add(batch.get_array_memory_size());
        if sent > budget.max_result_bytes {
            return Err(crate::sql::result_too_large(budget.max_result_bytes));
        }
        match sink {
            Sink::Send(rows) => rows
                .send(batch)
                .await
                .map_err(|_| Error::cancelled("the caller went away")),
            Sink::Keep(kept) => {
                kept.push(batch);
                Ok(())
            }
            Sink::None => Ok(()),
        }
    };
    let mut first = true;
    while let Some(row) = rows.next().await {
        let row = row.map_err(|e| sql_error(&e))?;
        summary.rows += 1;
        if matches!(sink, Sink::None) {
            continue;
        }
        let filling = match &mut batches {
            Some(filling) => filling,
            None => {
                let (filling, columns) = result_of(row.columns())?;
                summary.columns = columns;
                batches.insert(filling)
            }
        };
        filling.push(&row)?;
        if filling.full() {
            send(filling, &mut sink).await?;
            first = false;
        }
    }
    summary.rows_affected = rows.rows_affected().unwrap_or(0);
    if matches!(sink, Sink::None) {
        return Ok(summary);
    }
    if batches.is_none() && may_have_columns(sql) {
        let statement = prepare(client, sql, values).await?;
        if !statement.columns().is_empty() {
            let (filling, columns) = result_of(statement.columns())?;
            summary.columns = columns;
            batches = Some(filling);
        }
    }
    if let Some(filling) = &mut batches
        && (first || filling.rows > 0)
    {
        send(filling, &mut sink).await?;
    }
    Ok(summary)
}

/// A keyed call's outcome: its summary and the rows it returned.
pub(super) struct Kept {
    pub summary: SqlSummary,
    pub batches: Vec<RecordBatch>,
}

impl Kept {
    /// Sends the rows to the caller; the summary is the call's answer.
    pub(super) async fn deliver(self, rows: &Rows) -> Result<SqlSummary> {
        for batch in self.batches {
            rows.send(batch)
                .await
                .map_err(|_| Error::cancelled("the caller went away"))?;
        }
        Ok(self.summary)
    }
}

impl Replay for Kept {
    fn encode(&self) -> Vec<u8> {
        // A JSON header line (counts, column names and declared types),
        // then the rows as one Arrow IPC stream (which carries the types).
        let header = serde_json::json!({
            "rows": self.summary.rows,
            "rows_affected": self.summary.rows_affected,
            "columns": self.summary.columns.iter().map(|(n, d, _)| [n, d]).collect::<Vec<_>>(),
        });
        let mut out = header.to_string().into_bytes();
        out.push(b'\n');
        if let Some(first) = self.batches.first() {
            let written = arrow_ipc::writer::StreamWriter::try_new(&mut out, &first.schema())
                .and_then(|mut writer| {
                    for batch in &self.batches {
                        writer.write(batch)?;
                    }
                    writer.finish()
                });
            if written.is_err() {
                // Kept as too large: a retry learns the call was applied.
                return crate::calls::TOO_LARGE.to_vec();
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Kept> {
        let bad = || Error::internal("a kept outcome could not be read back");
        let split = bytes.iter().position(|b| *b == b'\n').ok_or_else(bad)?;
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[..split]).map_err(|_| bad())?;
        let batches = if bytes.len() > split + 1 {
            arrow_ipc::reader::StreamReader::try_new(&bytes[split + 1..], None)
                .map_err(|_| bad())?
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| bad())?
        } else {
            Vec::new()
        };
        let types: Vec<arrow_schema::DataType> = batches
            .first()
            .map(|b| {
                b.schema()
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect()
            })
            .unwrap_or_default();
        let columns = header["columns"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .zip(types)
            .map(|(pair, kind)| {
                (
                    pair[0].as_str().unwrap_or_default().to_string(),
                    pair[1].as_str().unwrap_or_default().to_string(),
                    kind,
                )
            })
            .collect();
        Ok(Kept {
            summary: SqlSummary {
                rows: header["rows"].as_u64().ok_or_else(bad)?,
                rows_affected: header["rows_affected"].as_u64().ok_or_else(bad)?,
                last_insert_rowid: 0,
                columns,
            },
            batches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_bind_by_name_or_number_and_mismatches_are_refused() {
        let named = SqlParams {
            positional: vec![],
            named: vec![
                (":a".into(), SqlParam::Integer(1)),
                ("b".into(), SqlParam::Null),
            ],
        };
        let (sql, values) = bind("SELECT :a, :b, :a", &named).unwrap();
        assert_eq!(sql, "SELECT $1, $2, $1");
        assert_eq!(values, vec![SqlParam::Integer(1), SqlParam::Null]);
        assert!(bind("SELECT :a", &named).is_err(), "b is unknown");
        let positional = SqlParams {
            positional: vec![SqlParam::Integer(1)],
            named: vec![],
        };
        assert!(bind("SELECT $1", &positional).is_ok());
        assert!(bind("SELECT $1, $2", &positional).is_err());
        assert!(bind("SELECT :a", &positional).is_err());
    }
}
