//! SQL on DATABASE resources: bound parameters in, Arrow record batches (or
//! JSON rows) out.

use crate::client::Client;
use crate::error::{Error, ErrorCode, Result};
use crate::pieces::Piece;
use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use busbar_proto::v1::{
    self as pb, execute_response::Part, sql_client::SqlClient, sql_value::Kind,
};
use futures::StreamExt;

pub use pb::{ExecuteSummary, SqlColumn};

/// A parameter value for a statement (one definition with the node's).
pub use busbar_types::SqlParam;

fn to_proto(param: SqlParam) -> pb::SqlValue {
    let kind = match param {
        SqlParam::Null => Kind::Null(true),
        SqlParam::Integer(i) => Kind::Integer(i),
        SqlParam::Real(r) => Kind::Real(r),
        SqlParam::Text(t) => Kind::Text(t),
        SqlParam::Blob(b) => Kind::Blob(b.into()),
        SqlParam::Boolean(b) => Kind::Boolean(b),
        SqlParam::TimestampMs(ms) => Kind::TimestampMs(ms),
    };
    pb::SqlValue { kind: Some(kind) }
}

/// One SQL statement with its parameters: by position (`?`, `?NNN`) or by
/// name (`:name`, `@name`, `$name`), not both.
#[derive(Debug, Clone, Default)]
pub struct Statement {
    sql: String,
    params: Vec<SqlParam>,
    named: Vec<(String, SqlParam)>,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement {
            sql: sql.into(),
            ..Default::default()
        }
    }

    /// Binds the next positional parameter.
    pub fn bind(mut self, value: impl Into<SqlParam>) -> Statement {
        self.params.push(value.into());
        self
    }

    /// Binds a named parameter (the name may omit its `:`, `@` or `$`).
    pub fn bind_named(mut self, name: impl Into<String>, value: impl Into<SqlParam>) -> Statement {
        self.named.push((name.into(), value.into()));
        self
    }

    fn request(
        mut self,
        database: &str,
        format: pb::ResultFormat,
        session: String,
    ) -> pb::ExecuteRequest {
        let sql = std::mem::take(&mut self.sql);
        let bound = self.row();
        pb::ExecuteRequest {
            database: database.into(),
            sql,
            params: bound.params,
            named: bound.named,
            format: format as i32,
            session,
            rows: Vec::new(),
        }
    }

    /// This statement's parameters as one row of an executemany.
    fn row(self) -> pb::SqlRow {
        pb::SqlRow {
            params: self.params.into_iter().map(to_proto).collect(),
            named: self
                .named
                .into_iter()
                .map(|(name, value)| (name, to_proto(value)))
                .collect(),
        }
    }
}

/// Arguments of a stored procedure: by position (in the order of its
/// parameters) or by name, not both.
#[derive(Debug, Clone, Default)]
pub struct ProcedureArgs {
    args: Vec<SqlParam>,
    kwargs: Vec<(String, SqlParam)>,
}

impl ProcedureArgs {
    pub fn new() -> ProcedureArgs {
        ProcedureArgs::default()
    }

    /// Adds the next positional argument.
    pub fn arg(mut self, value: impl Into<SqlParam>) -> ProcedureArgs {
        self.args.push(value.into());
        self
    }

    /// Adds an argument by parameter name.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<SqlParam>) -> ProcedureArgs {
        self.kwargs.push((name.into(), value.into()));
        self
    }
}

pub use pb::Procedure;

impl From<&str> for Statement {
    fn from(sql: &str) -> Statement {
        Statement::new(sql)
    }
}

impl From<String> for Statement {
    fn from(sql: String) -> Statement {
        Statement::new(sql)
    }
}

/// The result of a statement: its rows as Arrow record batches.
#[derive(Debug, Clone)]
pub struct SqlResult {
    /// `None` for statements that return no columns (INSERT without RETURNING, DDL).
    pub schema: Option<SchemaRef>,
    pub batches: Vec<RecordBatch>,
    pub summary: ExecuteSummary,
}

/// The number of `ExecuteResponse.arrow_ipc`.
const ARROW_IPC_FIELD: u32 = 1;
const RUN_PROCEDURE: &str = "/busbar.v1.Sql/RunProcedure";

/// The messages of an `Execute` or `RunProcedure` call.
type Responses = crate::BoxStream<Piece<pb::ExecuteResponse>>;

fn protocol(message: &str) -> Error {
    Error::new(
        ErrorCode::Internal,
        format!("unexpected SQL response: {message}"),
    )
}

impl Client {
    fn sql_client(
        &self,
    ) -> SqlClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            crate::client::CallContext,
        >,
    > {
        SqlClient::with_interceptor(self.inner.channel(), self.context())
            .max_decoding_message_size(usize::MAX)
    }

    async fn sql_request(&self, request: pb::ExecuteRequest) -> Result<Responses> {
        self.sql_stream("/busbar.v1.Sql/Execute", request).await
    }

    /// A call that answers with a stream of `ExecuteResponse`s, whose
    /// `arrow_ipc` pieces land in aligned buffers, one copy each.
    async fn sql_stream(
        &self,
        path: &'static str,
        request: impl prost::Message,
    ) -> Result<Responses> {
        crate::pieces::server_streaming(self.intercepted(), path, request, ARROW_IPC_FIELD).await
    }

    /// Runs one statement on the database at `database`; returns its rows as
    /// Arrow record batches. `statement` is SQL text or a [`Statement`] with
    /// bound parameters.
    ///
    /// Sent with an idempotency key: on a cluster, a statement whose
    /// answer was lost with its node is sent again to the next node and
    /// applied once (see [`Client::keyed`]).
    pub async fn sql(&self, database: &str, statement: impl Into<Statement>) -> Result<SqlResult> {
        let request =
            statement
                .into()
                .request(database, pb::ResultFormat::Arrow, self.session_id());
        self.keyed(|client| {
            let request = request.clone();
            async move { collect_arrow(client.sql_request(request).await?).await }
        })
        .await
    }

    /// Runs `sql` once per row of parameters (each a [`Statement`] of that
    /// SQL's binds; its text is ignored), in one round trip and one
    /// transaction: all rows take effect or none. Returns the summary, whose
    /// `rows_affected` counts every row's changes.
    pub async fn sql_many(
        &self,
        database: &str,
        sql: &str,
        rows: impl IntoIterator<Item = Statement>,
    ) -> Result<ExecuteSummary> {
        let mut request =
            Statement::new(sql).request(database, pb::ResultFormat::Arrow, self.session_id());
        request.rows = rows.into_iter().map(Statement::row).collect();
        if request.rows.is_empty() {
            return Ok(ExecuteSummary::default());
        }
        self.keyed(|client| {
            let request = request.clone();
            async move {
                Ok(collect_arrow(client.sql_request(request).await?)
                    .await?
                    .summary)
            }
        })
        .await
    }

    /// Creates a stored procedure: `body` holds one or more statements using
    /// `:name` parameters from `params`, run atomically. With `replace`, an
    /// existing procedure of that name is replaced.
    pub async fn create_procedure(
        &self,
        database: &str,
        name: &str,
        params: &[&str],
        body: &str,
        replace: bool,
    ) -> Result<Procedure> {
        let request = pb::CreateProcedureRequest {
            database: database.into(),
            name: name.into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            body: body.into(),
            replace,
        };
        let create = async |client: Client, request| {
            Ok(client
                .sql_client()
                .create_procedure(request)
                .await?
                .into_inner())
        };
        if replace {
            // Sets the procedure, whatever was there: safe to send again.
            return self.again(request, create).await;
        }
        self.keyed_with(request, create).await
    }

    pub async fn drop_procedure(&self, database: &str, name: &str) -> Result<()> {
        let request = pb::DropProcedureRequest {
            database: database.into(),
            name: name.into(),
        };
        self.removal(request, async |client, request| {
            client.sql_client().drop_procedure(request).await?;
            Ok(())
        })
        .await
        .map(drop)
    }

    pub async fn procedures(&self, database: &str) -> Result<Vec<Procedure>> {
        let request = pb::ListProceduresRequest {
            database: database.into(),
        };
        Ok(self
            .sql_client()
            .list_procedures(request)
            .await?
            .into_inner()
            .procedures)
    }

    /// Runs a stored procedure; rows of its last statement come back.
    pub async fn run_procedure(
        &self,
        database: &str,
        name: &str,
        args: ProcedureArgs,
    ) -> Result<SqlResult> {
        let request = self.procedure_request(database, name, args, pb::ResultFormat::Arrow);
        self.keyed(|client| {
            let request = request.clone();
            async move { collect_arrow(client.sql_stream(RUN_PROCEDURE, request).await?).await }
        })
        .await
    }

    /// Runs a stored procedure and returns the rows as JSON objects.
    pub async fn run_procedure_json(
        &self,
        database: &str,
        name: &str,
        args: ProcedureArgs,
    ) -> Result<(Vec<serde_json::Value>, ExecuteSummary)> {
        let request = self.procedure_request(database, name, args, pb::ResultFormat::Json);
        self.keyed(|client| {
            let request = request.clone();
            async move { collect_json(client.sql_stream(RUN_PROCEDURE, request).await?).await }
        })
        .await
    }

    fn procedure_request(
        &self,
        database: &str,
        name: &str,
        args: ProcedureArgs,
        format: pb::ResultFormat,
    ) -> pb::RunProcedureRequest {
        pb::RunProcedureRequest {
            database: database.into(),
            name: name.into(),
            args: args.args.into_iter().map(to_proto).collect(),
            kwargs: args
                .kwargs
                .into_iter()
                .map(|(k, v)| (k, to_proto(v)))
                .collect(),
            format: format as i32,
            session: self.session_id(),
        }
    }

    /// Runs one statement and returns its rows as JSON objects.
    pub async fn sql_json(
        &self,
        database: &str,
        statement: impl Into<Statement>,
    ) -> Result<(Vec<serde_json::Value>, ExecuteSummary)> {
        let request = statement
            .into()
            .request(database, pb::ResultFormat::Json, self.session_id());
        self.keyed(|client| {
            let request = request.clone();
            async move { collect_json(client.sql_request(request).await?).await }
        })
        .await
    }
}

/// Reads a response stream past its summary to its end. Dropping it
/// there instead would make the client reset the call's HTTP/2 stream
/// while the node's trailers are on the way; h2 counts frames that then
/// arrive for streams it no longer tracks, and past about a thousand of
/// them on one connection it closes the connection as abusive
/// (`too_many_internal_resets`), failing every call on it.
///
/// The summary is the call's outcome: a status that fails after it (the
/// deadline passing between the two) does not undo a write it reported.
async fn ended(mut responses: Responses) -> Result<()> {
    match responses.next().await {
        None | Some(Err(_)) => Ok(()),
        Some(Ok(_)) => Err(protocol("a message after the summary")),
    }
}

async fn collect_json(
    mut responses: Responses,
) -> Result<(Vec<serde_json::Value>, ExecuteSummary)> {
    let mut rows = Vec::new();
    while let Some(response) = responses.next().await.transpose()? {
        match response {
            Piece::Message(pb::ExecuteResponse {
                part: Some(Part::JsonRows(text)),
            }) => match serde_json::from_str(&text) {
                Ok(serde_json::Value::Array(more)) => rows.extend(more),
                _ => return Err(protocol("rows are not a JSON array")),
            },
            Piece::Message(pb::ExecuteResponse {
                part: Some(Part::Summary(summary)),
            }) => {
                ended(responses).await?;
                return Ok((rows, summary));
            }
            _ => return Err(protocol("Arrow data in a JSON result")),
        }
    }
    Err(protocol("no summary"))
}

async fn collect_arrow(mut responses: Responses) -> Result<SqlResult> {
    let mut decoder = crate::timeseries::node_ipc();
    let mut batches = Vec::new();
    let arrow = |e: busbar_ipc::Malformed| protocol(&format!("bad Arrow IPC: {e}"));
    while let Some(response) = responses.next().await.transpose()? {
        let buffer = match response {
            Piece::Bytes(buffer) => buffer,
            Piece::Message(pb::ExecuteResponse {
                part: Some(Part::ArrowIpc(bytes)),
            }) => arrow_buffer::Buffer::from(bytes), // takes the bytes as they are, no copy
            Piece::Message(pb::ExecuteResponse {
                part: Some(Part::Summary(summary)),
            }) => {
                let schema = decoder.schema();
                if schema.is_some() {
                    batches.extend(decoder.finish().map_err(arrow)?);
                }
                ended(responses).await?;
                return Ok(SqlResult {
                    schema,
                    batches,
                    summary,
                });
            }
            _ => return Err(protocol("JSON rows in an Arrow result")),
        };
        for batch in decoder.decode(buffer) {
            batches.push(batch.map_err(arrow)?);
        }
    }
    Err(protocol("no summary"))
}
