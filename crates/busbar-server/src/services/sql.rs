//! `busbar.v1.Sql`: statements on DATABASE resources, results as Arrow IPC or JSON.

use super::Reply;
use crate::error::{Error, Result};
use crate::node::{Node, caller};
use crate::paths;
use crate::store::{ResourceKind, Right, SqlParam, SqlParams, SqlSummary};
use arrow_array::{Array, RecordBatch, cast::AsArray, types};
use arrow_schema::DataType;
use base64::Engine;
use busbar_proto::v1::{self as pb, execute_response::Part, sql_server::Sql, sql_value::Kind};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Status};

pub struct SqlService {
    pub node: Arc<Node>,
}

/// Record batches queued between the engine and the network.
const BATCH_QUEUE: usize = 4;
/// Largest Arrow IPC piece per message; pieces are concatenated by the client.
const MAX_PIECE: usize = 1 << 20;

fn param(value: pb::SqlValue) -> Result<SqlParam> {
    Ok(match value.kind {
        None | Some(Kind::Null(_)) => SqlParam::Null,
        Some(Kind::Integer(i)) => SqlParam::Integer(i),
        Some(Kind::Real(r)) => SqlParam::Real(r),
        Some(Kind::Text(t)) => SqlParam::Text(t),
        Some(Kind::Blob(b)) => SqlParam::Blob(b.to_vec()),
        Some(Kind::Boolean(b)) => SqlParam::Boolean(b),
        Some(Kind::TimestampMs(ms)) => SqlParam::TimestampMs(ms),
    })
}

fn rfc3339(ms: i64) -> serde_json::Value {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or(serde_json::Value::Null, serde_json::Value::String)
}

/// Rows of a batch as JSON objects (column name → value).
pub fn json_rows(batch: &RecordBatch) -> Vec<serde_json::Value> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let schema = batch.schema();
    let mut rows: Vec<serde_json::Map<String, serde_json::Value>> = (0..batch.num_rows())
        .map(|_| serde_json::Map::new())
        .collect();
    for (column, field) in batch.columns().iter().zip(schema.fields()) {
        for (row, object) in rows.iter_mut().enumerate() {
            let value = if column.is_null(row) {
                serde_json::Value::Null
            } else {
                match field.data_type() {
                    DataType::Int64 => column.as_primitive::<types::Int64Type>().value(row).into(),
                    DataType::Float64 => serde_json::Number::from_f64(
                        column.as_primitive::<types::Float64Type>().value(row),
                    )
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
                    DataType::Boolean => column.as_boolean().value(row).into(),
                    DataType::Binary => b64.encode(column.as_binary::<i32>().value(row)).into(),
                    DataType::Timestamp(..) => rfc3339(
                        column
                            .as_primitive::<types::TimestampMillisecondType>()
                            .value(row),
                    ),
                    _ => column.as_string::<i32>().value(row).into(),
                }
            };
            object.insert(field.name().clone(), value);
        }
    }
    rows.into_iter().map(serde_json::Value::Object).collect()
}

fn summary_pb(summary: SqlSummary) -> pb::ExecuteSummary {
    pb::ExecuteSummary {
        rows: summary.rows,
        rows_affected: summary.rows_affected,
        last_insert_rowid: summary.last_insert_rowid,
        columns: summary
            .columns
            .into_iter()
            .map(|(name, declared_type, arrow)| pb::SqlColumn {
                name,
                declared_type,
                arrow_type: arrow.to_string(),
            })
            .collect(),
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<pb::ExecuteResponse, Status>> + Send>>;

fn part(part: Part) -> Result<pb::ExecuteResponse, Status> {
    Ok(pb::ExecuteResponse { part: Some(part) })
}

#[tonic::async_trait]
impl Sql for SqlService {
    type ExecuteStream = Responses;

    async fn execute(&self, request: Request<pb::ExecuteRequest>) -> Reply<Responses> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let path = paths::normalize(&r.database)?;
        let database = self
            .node
            .access
            .require_resource(&caller, &path, Right::Read)
            .await?;
        if database.kind != ResourceKind::Database {
            return Err(Error::failed_precondition(format!(
                "{path} is a {}, not a database",
                database.kind.name()
            ))
            .into());
        }
        let read_only = self.node.access.right(&caller, &path).await? < Some(Right::Write);
        let params = SqlParams {
            positional: r.params.into_iter().map(param).collect::<Result<_>>()?,
            named: r
                .named
                .into_iter()
                .map(|(k, v)| Ok((k, param(v)?)))
                .collect::<Result<_>>()?,
        };
        let json = r.format == pb::ResultFormat::Json as i32;
        let (sink, mut batches) = mpsc::channel::<RecordBatch>(BATCH_QUEUE);
        let databases = self.node.sql.clone();
        let id = database.id.clone();
        let mut running =
            tokio::spawn(
                async move { databases.execute(&id, r.sql, params, read_only, sink).await },
            );

        // Errors before the first row (syntax, parameters, rights) fail the call itself.
        let first = batches.recv().await;
        if first.is_none() {
            let summary = running.await.map_err(Error::from)??;
            return super::reply(Box::pin(futures::stream::iter([part(Part::Summary(
                summary_pb(summary),
            ))])));
        }
        let (out, responses) = mpsc::channel::<Result<pb::ExecuteResponse, Status>>(BATCH_QUEUE);
        tokio::spawn(async move {
            let mut writer: Option<arrow_ipc::writer::StreamWriter<Vec<u8>>> = None;
            let mut next = first;
            while let Some(batch) = next {
                let pieces: Vec<Part> = if json {
                    vec![Part::JsonRows(
                        serde_json::Value::Array(json_rows(&batch)).to_string(),
                    )]
                } else {
                    let writer = match &mut writer {
                        Some(writer) => writer,
                        None => match arrow_ipc::writer::StreamWriter::try_new(
                            Vec::new(),
                            &batch.schema(),
                        ) {
                            Ok(made) => writer.insert(made),
                            Err(e) => {
                                let _ = out
                                    .send(Err(Error::internal(format!("Arrow IPC: {e}")).into()))
                                    .await;
                                return;
                            }
                        },
                    };
                    if let Err(e) = writer.write(&batch) {
                        let _ = out
                            .send(Err(Error::internal(format!("Arrow IPC: {e}")).into()))
                            .await;
                        return;
                    }
                    // Pieces are slices of one buffer: no copy per piece.
                    let bytes = bytes::Bytes::from(std::mem::take(writer.get_mut()));
                    (0..bytes.len())
                        .step_by(MAX_PIECE)
                        .map(|start| {
                            Part::ArrowIpc(bytes.slice(start..bytes.len().min(start + MAX_PIECE)))
                        })
                        .collect()
                };
                for piece in pieces {
                    if out.send(part(piece)).await.is_err() {
                        return; // the caller went away; dropping `batches` stops the engine
                    }
                }
                next = batches.recv().await;
            }
            if let Some(mut writer) = writer {
                let _ = writer.finish();
                let end = std::mem::take(writer.get_mut());
                let _ = out.send(part(Part::ArrowIpc(end.into()))).await;
            }
            let last = match (&mut running).await {
                Ok(Ok(summary)) => part(Part::Summary(summary_pb(summary))),
                Ok(Err(error)) => Err(error.into()),
                Err(error) => Err(Error::from(error).into()),
            };
            let _ = out.send(last).await;
        });
        super::reply(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            responses,
        )))
    }
}
