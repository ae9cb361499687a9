//! `busbar.v1.Sql`: statements on DATABASE resources, results as Arrow IPC or JSON.

use super::flight_statements::MAX_BOUND_ROWS as MAX_MANY_ROWS;
use crate::auth::access::Caller;
use crate::error::{Error, Result};
use crate::grpc::ipc::IpcPieces;
use crate::grpc::{Reply, reply};
use crate::node::{Node, caller, caller_and_message};
use crate::sql::{
    Arguments, Budget, On, Procedure, Query, SqlParam, SqlParams, SqlSummary, StopOnDrop,
};
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
        // Narrower numbers widen, timestamps become milliseconds and dates
        // text, so the match below sees one type of each kind.
        let wider = match field.data_type() {
            DataType::Int8 | DataType::Int16 | DataType::Int32 => Some(DataType::Int64),
            DataType::Float16 | DataType::Float32 => Some(DataType::Float64),
            DataType::Timestamp(unit, zone) if *unit != arrow_schema::TimeUnit::Millisecond => {
                Some(DataType::Timestamp(
                    arrow_schema::TimeUnit::Millisecond,
                    zone.clone(),
                ))
            }
            DataType::Date32 | DataType::Date64 => Some(DataType::Utf8),
            _ => None,
        };
        let (column, field) = match wider {
            Some(kind) => {
                let widened = arrow_cast::cast(column, &kind).unwrap_or_else(|_| column.clone());
                let field =
                    arrow_schema::Field::new(field.name(), widened.data_type().clone(), true);
                (widened, std::sync::Arc::new(field))
            }
            None => (column.clone(), field.clone()),
        };
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

/// Streams what a running statement sends to its sink: Arrow IPC pieces or
/// JSON rows, then the summary. Errors before the first row fail the call
/// itself (syntax, parameters, rights).
///
/// `stop` lives as long as the reply does: when the caller goes away (or its
/// deadline passes before the first row), dropping it stops the statement.
async fn respond(
    mut running: tokio::task::JoinHandle<Result<SqlSummary>>,
    mut batches: mpsc::Receiver<RecordBatch>,
    json: bool,
    stop: StopOnDrop,
    max_message_bytes: usize,
) -> Reply<Responses> {
    let first = batches.recv().await;
    if first.is_none() {
        let summary = running.await.map_err(Error::from)??;
        return reply(Box::pin(futures::stream::iter([part(Part::Summary(
            summary_pb(summary),
        ))])));
    }
    let (out, responses) = mpsc::channel::<Result<pb::ExecuteResponse, Status>>(BATCH_QUEUE);
    tokio::spawn(async move {
        let _stop = stop;
        let mut pieces = IpcPieces::within(max_message_bytes);
        let mut schema = None;
        let mut next = first;
        while let Some(batch) = next {
            let encoded = if json {
                Ok(vec![Part::JsonRows(
                    serde_json::Value::Array(json_rows(&batch)).to_string(),
                )])
            } else {
                schema.get_or_insert_with(|| batch.schema());
                pieces
                    .batch(&batch)
                    .map(|bytes| bytes.into_iter().map(Part::ArrowIpc).collect())
            };
            let encoded = match encoded {
                Ok(encoded) => encoded,
                Err(error) => {
                    let _ = out.send(Err(error.into())).await;
                    return;
                }
            };
            for piece in encoded {
                if out.send(part(piece)).await.is_err() {
                    return; // the caller went away; dropping `batches` stops the engine
                }
            }
            next = tokio::select! {
                next = batches.recv() => next,
                // The caller left while the statement works on its next rows.
                () = out.closed() => return,
            };
        }
        if let Some(schema) = schema {
            for piece in pieces.finish(&schema).unwrap_or_default() {
                let _ = out.send(part(Part::ArrowIpc(piece))).await;
            }
        }
        let last = match (&mut running).await {
            Ok(Ok(summary)) => part(Part::Summary(summary_pb(summary))),
            Ok(Err(error)) => Err(error.into()),
            Err(error) => Err(Error::from(error).into()),
        };
        let _ = out.send(last).await;
    });
    reply(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
        responses,
    )))
}

fn params(
    positional: Vec<pb::SqlValue>,
    named: impl IntoIterator<Item = (String, pb::SqlValue)>,
) -> Result<SqlParams> {
    Ok(SqlParams {
        positional: positional.into_iter().map(param).collect::<Result<_>>()?,
        named: named
            .into_iter()
            .map(|(k, v)| Ok((k, param(v)?)))
            .collect::<Result<_>>()?,
    })
}

fn procedure_pb(p: Procedure) -> pb::Procedure {
    pb::Procedure {
        name: p.name,
        params: p.params,
        body: p.body,
        created_ms: p.created_ms,
    }
}

impl SqlService {
    /// Where the call's SQL runs: a database the caller may read, in the
    /// named data session if any.
    async fn on(&self, caller: &Caller, database: &str, session: &str) -> Result<On> {
        let database = crate::sql::open(&self.node, caller, database, "").await?;
        let session = if session.is_empty() {
            None
        } else {
            Some(self.node.sessions.get(session, &caller.identity_id)?)
        };
        Ok(On {
            database,
            session,
            key: None,
        })
    }

    /// What a call that runs statements starts from: where they run (with
    /// the call's idempotency key), its budget, and the guard that stops
    /// its statement when the call goes away.
    async fn run_on<M: prost::Message>(
        &self,
        request: &Request<M>,
        method: &str,
        database: &str,
        session: &str,
    ) -> std::result::Result<(On, Budget, StopOnDrop), Status> {
        let caller = caller(request)?;
        let key = crate::calls::CallKey::of(&self.node, request, &caller, method)?;
        let mut on = self.on(&caller, database, session).await?;
        on.key = key;
        let (budget, stop) = self.node.sql_budget(request);
        Ok((on, budget, stop))
    }

    /// `Execute` with `rows` (executemany): the statement once per row, in
    /// one transaction; a session's earlier work is kept if a row fails.
    async fn execute_many(
        &self,
        on: On,
        request: pb::ExecuteRequest,
        budget: Budget,
    ) -> Reply<Responses> {
        if !request.params.is_empty() || !request.named.is_empty() {
            return Err(Error::invalid_argument(
                "executemany binds each row's parameters: leave params and named empty",
            )
            .into());
        }
        if request.rows.len() > MAX_MANY_ROWS {
            return Err(Error::invalid_argument(format!(
                "{} rows in one executemany; at most {MAX_MANY_ROWS}: split them",
                request.rows.len()
            ))
            .into());
        }
        let rows = request
            .rows
            .into_iter()
            .map(|row| params(row.params, row.named))
            .collect::<Result<Vec<_>>>()?;
        let changed = self
            .node
            .sql
            .execute_each(on, Query::new(request.sql, rows, budget))
            .await?;
        let summary = SqlSummary {
            rows_affected: changed,
            ..SqlSummary::default()
        };
        reply(Box::pin(futures::stream::iter([part(Part::Summary(
            summary_pb(summary),
        ))])))
    }

    /// Runs `work` on the engine with a sink for its rows, and streams them
    /// back as the call's reply (see [`respond`]).
    async fn rows<F, Fut>(&self, json: bool, stop: StopOnDrop, work: F) -> Reply<Responses>
    where
        F: FnOnce(Arc<dyn crate::sql::SqlEngine>, crate::sql::Rows) -> Fut,
        Fut: std::future::Future<Output = Result<SqlSummary>> + Send + 'static,
    {
        let (sink, batches) = mpsc::channel::<RecordBatch>(BATCH_QUEUE);
        let running = tokio::spawn(work(self.node.sql.clone(), sink));
        let max_message_bytes = self.node.config.max_message_bytes;
        respond(running, batches, json, stop, max_message_bytes).await
    }

    /// Where a procedure change runs: it needs write on the database.
    async fn writable(&self, caller: &Caller, database: &str) -> Result<On> {
        let on = self.on(caller, database, "").await?;
        if on.database.read_only {
            return Err(Error::permission_denied(format!(
                "changing procedures needs write on {database}"
            )));
        }
        Ok(on)
    }
}

#[tonic::async_trait]
impl Sql for SqlService {
    type ExecuteStream = Responses;
    type RunProcedureStream = Responses;

    async fn execute(&self, request: Request<pb::ExecuteRequest>) -> Reply<Responses> {
        let (database, session) = (&request.get_ref().database, &request.get_ref().session);
        let (on, budget, stop) = self.run_on(&request, "Execute", database, session).await?;
        let r = request.into_inner();
        if !r.rows.is_empty() {
            return self.execute_many(on, r, budget).await;
        }
        let params = params(r.params, r.named)?;
        let json = r.format == pb::ResultFormat::Json as i32;
        self.rows(json, stop, move |engine, sink| async move {
            let query = Query::new(r.sql, params, budget);
            engine.execute(on, query, sink).await
        })
        .await
    }

    async fn create_procedure(
        &self,
        request: Request<pb::CreateProcedureRequest>,
    ) -> Reply<pb::Procedure> {
        let caller = caller(&request)?;
        let key = crate::calls::CallKey::of(&self.node, &request, &caller, "CreateProcedure")?;
        let r = request.into_inner();
        let mut on = self.writable(&caller, &r.database).await?;
        on.key = key;
        let procedure = Procedure {
            name: r.name,
            params: r.params,
            body: r.body,
            created_ms: 0,
        };
        let made = self
            .node
            .sql
            .create_procedure(on, procedure, r.replace)
            .await?;
        reply(procedure_pb(made))
    }

    async fn drop_procedure(
        &self,
        request: Request<pb::DropProcedureRequest>,
    ) -> Reply<pb::DropProcedureResponse> {
        let (caller, r) = caller_and_message(request)?;
        let on = self.writable(&caller, &r.database).await?;
        self.node.sql.drop_procedure(on, r.name).await?;
        reply(pb::DropProcedureResponse {})
    }

    async fn list_procedures(
        &self,
        request: Request<pb::ListProceduresRequest>,
    ) -> Reply<pb::ListProceduresResponse> {
        let (caller, r) = caller_and_message(request)?;
        let on = self.on(&caller, &r.database, "").await?;
        let list = self.node.sql.list_procedures(on).await?;
        reply(pb::ListProceduresResponse {
            procedures: list.into_iter().map(procedure_pb).collect(),
        })
    }

    async fn run_procedure(&self, request: Request<pb::RunProcedureRequest>) -> Reply<Responses> {
        let message = request.get_ref();
        let (database, session) = (&message.database, &message.session);
        let (on, budget, stop) = self
            .run_on(&request, "RunProcedure", database, session)
            .await?;
        let r = request.into_inner();
        let given = params(r.args, r.kwargs)?;
        let args = Arguments {
            positional: given.positional,
            named: given.named.into_iter().collect(),
        };
        let json = r.format == pb::ResultFormat::Json as i32;
        self.rows(json, stop, move |engine, sink| async move {
            let run = Query::new(r.name, args, budget);
            engine.run_procedure(on, run, sink).await
        })
        .await
    }
}
