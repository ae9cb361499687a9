//! Flight SQL on DATABASE resources. The call header `x-busbar-database`
//! names the database; rights are checked as for `Sql/Execute` (read rights:
//! statements that do not write; write rights: anything), by the same
//! engine path.
//!
//! Tickets are self-contained and unsigned: a statement ticket holds the
//! database path, the SQL, its parameters and the announced columns, and
//! `DoGet` resolves the database against the caller again, so a ticket grants
//! nothing its holder could not ask for directly.

use super::flight_statements::{MAX_BOUND_ROWS, Prepared, PreparedStatements};
use crate::auth::access::Caller;
use crate::error::{Error, Result};
use crate::grpc::flight::{
    FlightDataStream, caller_of, checked_flight_data, encode, flight_error, info,
};
use crate::node::Node;
use crate::sql::{Budget, Database, Description, Query, SqlParam, SqlParams};
use arrow_array::{Array, ArrayRef, RecordBatch, cast::AsArray, types};
use arrow_cast::{CastOptions, cast_with_options};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Command, CommandPreparedStatementQuery,
    CommandPreparedStatementUpdate, CommandStatementQuery, CommandStatementUpdate,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{FlightData, FlightDescriptor, FlightInfo, IpcMessage, SchemaAsIpc, Ticket};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use base64::Engine;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::{Request, Status};

/// The call header naming the database.
pub const DATABASE_HEADER: &str = "x-busbar-database";
/// Record batches queued between the engine and the network.
const BATCH_QUEUE: usize = 4;
/// SQLite calls its one database `main`; Busbar shows it as catalog and schema.
const CATALOG: &str = "main";

/// A bound value inside a ticket (reals by bit pattern, so NaN survives JSON).
#[derive(Serialize, Deserialize)]
enum TicketValue {
    Null,
    Integer(i64),
    Real(u64),
    Text(String),
    Blob(String),
    Boolean(bool),
    TimestampMs(i64),
}

impl From<&SqlParam> for TicketValue {
    fn from(param: &SqlParam) -> TicketValue {
        match param {
            SqlParam::Null => TicketValue::Null,
            SqlParam::Integer(i) => TicketValue::Integer(*i),
            SqlParam::Real(r) => TicketValue::Real(r.to_bits()),
            SqlParam::Text(t) => TicketValue::Text(t.clone()),
            SqlParam::Blob(b) => {
                TicketValue::Blob(base64::engine::general_purpose::STANDARD.encode(b))
            }
            SqlParam::Boolean(b) => TicketValue::Boolean(*b),
            SqlParam::TimestampMs(ms) => TicketValue::TimestampMs(*ms),
        }
    }
}

impl TicketValue {
    fn param(self) -> Result<SqlParam> {
        Ok(match self {
            TicketValue::Null => SqlParam::Null,
            TicketValue::Integer(i) => SqlParam::Integer(i),
            TicketValue::Real(bits) => SqlParam::Real(f64::from_bits(bits)),
            TicketValue::Text(t) => SqlParam::Text(t),
            TicketValue::Blob(b) => SqlParam::Blob(
                base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|_| bad_ticket())?,
            ),
            TicketValue::Boolean(b) => SqlParam::Boolean(b),
            TicketValue::TimestampMs(ms) => SqlParam::TimestampMs(ms),
        })
    }
}

/// What a statement ticket holds.
#[derive(Serialize, Deserialize)]
struct StatementTicket {
    database: String,
    sql: String,
    positional: Vec<TicketValue>,
    named: Vec<(String, TicketValue)>,
    /// Column names and Arrow types (as `DataType` displays them).
    columns: Vec<(String, String)>,
    /// Already run during GetFlightInfo (a write with no result columns).
    #[serde(default)]
    done: bool,
}

/// A statement ticket as a client sent it back: bytes from the network,
/// checked here, and the database's rights checked again by the caller.
pub(crate) struct ParsedTicket {
    pub database: String,
    pub sql: String,
    pub params: SqlParams,
    pub columns: Vec<(String, DataType)>,
    pub done: bool,
}

impl ParsedTicket {
    pub(crate) fn decode(handle: &[u8]) -> Result<ParsedTicket> {
        let ticket: StatementTicket = serde_json::from_slice(handle).map_err(|_| bad_ticket())?;
        let columns = ticket
            .columns
            .into_iter()
            .map(|(name, kind)| Ok((name, kind.parse().map_err(|_| bad_ticket())?)))
            .collect::<Result<Vec<(String, DataType)>>>()?;
        let params = SqlParams {
            positional: ticket
                .positional
                .into_iter()
                .map(TicketValue::param)
                .collect::<Result<_>>()?,
            named: ticket
                .named
                .into_iter()
                .map(|(name, value)| Ok((name, value.param()?)))
                .collect::<Result<_>>()?,
        };
        Ok(ParsedTicket {
            database: ticket.database,
            sql: ticket.sql,
            params,
            columns,
            done: ticket.done,
        })
    }
}

fn bad_ticket() -> Error {
    Error::invalid_argument("not a statement ticket this server issued; call GetFlightInfo again")
}

fn schema_of(columns: &[(String, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, kind)| Field::new(name, kind.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

fn ipc_schema(schema: &Schema) -> Result<bytes::Bytes> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e| Error::internal(format!("encoding a schema: {e}")))?;
    Ok(bytes)
}

/// `batch` with `schema`'s column types: the engine types expression columns
/// from the values it sees, which may differ from what GetFlightInfo announced.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
            .map_err(|e| Error::internal(format!("record batch: {e}")));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            cast_with_options(column, field.data_type(), &options).map_err(|e| {
                Error::invalid_argument(format!(
                    "column {} holds values that do not fit the type {} announced for it ({e}); \
                     CAST it in the query",
                    field.name(),
                    field.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| Error::internal(format!("record batch: {e}")))
}

/// Parameter rows from Arrow batches: by name when every column names one of
/// the statement's named parameters, else by position.
fn parameter_rows(batches: &[RecordBatch], parameters: &[String]) -> Result<Vec<SqlParams>> {
    let mut rows = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let named = !parameters.is_empty()
            && schema.fields().iter().all(|field| {
                parameters
                    .iter()
                    .any(|p| p.len() > 1 && (p == field.name() || p[1..] == *field.name().as_str()))
            });
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .enumerate()
            .map(|(i, (column, field))| parameter_column(column, i, field.name()))
            .collect::<Result<Vec<_>>>()?;
        for row in 0..batch.num_rows() {
            let mut params = SqlParams::default();
            for (column, field) in columns.iter().zip(schema.fields()) {
                let value = parameter_value(column, row);
                if named {
                    params.named.push((field.name().clone(), value));
                } else {
                    params.positional.push(value);
                }
            }
            rows.push(params);
        }
    }
    Ok(rows)
}

/// A parameter column cast to one of the types [`parameter_value`] reads.
fn parameter_column(column: &ArrayRef, index: usize, name: &str) -> Result<ArrayRef> {
    use DataType::*;
    let target = match column.data_type() {
        Null | Boolean | Int64 | Float64 | Utf8 | Binary => return Ok(column.clone()),
        Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32 | UInt64 => Int64,
        Float16 | Float32 | Decimal128(..) | Decimal256(..) => Float64,
        LargeUtf8 | Utf8View => Utf8,
        LargeBinary | BinaryView | FixedSizeBinary(_) => Binary,
        Timestamp(..) | Date32 | Date64 => Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        other => {
            return Err(Error::invalid_argument(format!(
                "parameter {} ({name}) has Arrow type {other}, which cannot be bound; use an \
                 integer, float, string, binary, boolean, timestamp or date",
                index + 1
            )));
        }
    };
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(column, &target, &options)
        .map_err(|e| Error::invalid_argument(format!("parameter {} ({name}): {e}", index + 1)))
}

fn parameter_value(column: &ArrayRef, row: usize) -> SqlParam {
    if column.is_null(row) {
        return SqlParam::Null;
    }
    match column.data_type() {
        DataType::Boolean => SqlParam::Boolean(column.as_boolean().value(row)),
        DataType::Int64 => SqlParam::Integer(column.as_primitive::<types::Int64Type>().value(row)),
        DataType::Float64 => SqlParam::Real(column.as_primitive::<types::Float64Type>().value(row)),
        DataType::Utf8 => SqlParam::Text(column.as_string::<i32>().value(row).to_string()),
        DataType::Binary => SqlParam::Blob(column.as_binary::<i32>().value(row).to_vec()),
        DataType::Timestamp(..) => SqlParam::TimestampMs(
            column
                .as_primitive::<types::TimestampMillisecondType>()
                .value(row),
        ),
        _ => SqlParam::Null,
    }
}

pub struct FlightSql {
    node: Arc<Node>,
    prepared: PreparedStatements,
}

impl FlightSql {
    pub fn new(node: Arc<Node>) -> FlightSql {
        FlightSql {
            node,
            prepared: PreparedStatements::default(),
        }
    }

    /// The database at `path`, if `caller` may read it.
    async fn open(&self, caller: &Caller, path: &str) -> Result<Database> {
        let hint = format!("; name a database in {DATABASE_HEADER}");
        crate::sql::open(&self.node, caller, path, &hint).await
    }

    /// The caller's prepared statement and its database, rights checked again.
    async fn prepared_target(
        &self,
        caller: &Caller,
        handle: &[u8],
    ) -> Result<(Prepared, Database)> {
        let prepared = self.prepared.get(&caller.identity_id, handle)?;
        let target = self.open(caller, &prepared.database).await?;
        Ok((prepared, target))
    }

    /// The caller and the database its `x-busbar-database` header names.
    async fn target<T: Sync>(&self, request: &Request<T>) -> Result<(Caller, Database)> {
        let (caller, path) = (caller_of(request)?, database_path(request)?);
        let target = self.open(&caller, &path).await?;
        Ok((caller, target))
    }

    fn refuse_writes(target: &Database, description: &Description) -> Result<()> {
        if target.read_only && !description.read_only {
            return Err(Error::permission_denied(format!(
                "this statement writes, and the caller holds only read on {}; ask an admin for \
                 write (busbar grant {} <name> write)",
                target.path, target.path
            )));
        }
        Ok(())
    }

    /// The FlightInfo of a statement. One that writes and returns no rows
    /// runs here, since clients (ADBC's `execute`) may never fetch its
    /// ticket; its ticket then yields no rows. Others run on DoGet.
    async fn statement_info(
        &self,
        target: &Database,
        sql: String,
        params: SqlParams,
        description: &Description,
        descriptor: FlightDescriptor,
        budget: Budget,
    ) -> Result<FlightInfo> {
        Self::refuse_writes(target, description)?;
        let done = !description.read_only && description.columns.is_empty();
        if done {
            self.node
                .sql
                .execute_each(
                    target.clone().into(),
                    Query::new(sql.clone(), vec![params.clone()], budget),
                )
                .await?;
        }
        let ticket = StatementTicket {
            database: target.path.clone(),
            sql,
            positional: params.positional.iter().map(TicketValue::from).collect(),
            named: params
                .named
                .iter()
                .map(|(name, value)| (name.clone(), value.into()))
                .collect(),
            columns: description
                .columns
                .iter()
                .map(|(name, kind)| (name.clone(), kind.to_string()))
                .collect(),
            done,
        };
        let handle = serde_json::to_vec(&ticket)
            .map_err(|e| Error::internal(format!("encoding a ticket: {e}")))?;
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        info(
            &schema_of(&description.columns),
            ticket.as_any().encode_to_vec(),
            descriptor,
        )
    }

    pub async fn query_info(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<FlightInfo> {
        let (budget, _stop) = self.node.sql_budget(&request);
        let (_, target) = self.target(&request).await?;
        let description = self
            .node
            .sql
            .describe(
                &target,
                Query::new(query.query.clone(), None, budget.clone()),
            )
            .await?;
        if !description.parameters.is_empty() {
            return Err(Error::invalid_argument(format!(
                "the statement takes {} parameters: prepare it (CreatePreparedStatement) and bind them",
                description.parameters.len()
            )));
        }
        self.statement_info(
            &target,
            query.query,
            SqlParams::default(),
            &description,
            request.into_inner(),
            budget,
        )
        .await
    }

    pub async fn prepared_query_info(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<FlightInfo> {
        let (budget, _stop) = self.node.sql_budget(&request);
        let handle = &query.prepared_statement_handle;
        let (prepared, target) = self.prepared_target(&caller_of(&request)?, handle).await?;
        let params = match prepared.bound.as_slice() {
            [] if prepared.parameters.is_empty() => SqlParams::default(),
            [] => {
                return Err(Error::invalid_argument(format!(
                    "the statement takes {} parameters: bind them first (DoPut)",
                    prepared.parameters.len()
                )));
            }
            [row] => row.clone(),
            rows => {
                return Err(Error::invalid_argument(format!(
                    "a query binds one row of parameters, and {} are bound; run it as an update \
                     to apply many rows",
                    rows.len()
                )));
            }
        };
        let description = self
            .node
            .sql
            .describe(
                &target,
                Query::new(prepared.sql.clone(), Some(params.clone()), budget.clone()),
            )
            .await?;
        self.statement_info(
            &target,
            prepared.sql,
            params,
            &description,
            request.into_inner(),
            budget,
        )
        .await
    }

    pub async fn run_ticket(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<BoxStream<'static, Result<FlightData, Status>>> {
        let caller = caller_of(&request)?;
        let (budget, stop) = self.node.sql_budget(&request);
        let ticket = ParsedTicket::decode(&ticket.statement_handle)?;
        let target = self.open(&caller, &ticket.database).await?;
        let (columns, params) = (ticket.columns, ticket.params);
        let schema = schema_of(&columns);
        if ticket.done {
            return Ok(encode(schema, futures::stream::empty()));
        }
        let (sink, mut batches) = mpsc::channel::<RecordBatch>(BATCH_QUEUE);
        let databases = self.node.sql.clone();
        let running = tokio::spawn(async move {
            databases
                .execute(target.into(), Query::new(ticket.sql, params, budget), sink)
                .await
        });
        // Errors before the first batch (rights, SQL) fail the call itself.
        let first = batches.recv().await;
        if first.is_none() {
            running.await??;
            return Ok(encode(schema, futures::stream::empty()));
        }
        let conformed = schema.clone();
        // `stop` rides in the stream's state: a reader that goes away drops
        // it, which stops the statement.
        let rows = futures::stream::unfold(
            (first, batches, Some(running), stop),
            move |(next, mut batches, running, stop)| {
                let schema = conformed.clone();
                async move {
                    match next {
                        Some(batch) => {
                            let item = conform(batch, &schema);
                            let following = batches.recv().await;
                            Some((item, (following, batches, running, stop)))
                        }
                        None => {
                            // The engine is done: report how it ended.
                            let ended = match running?.await {
                                Ok(Ok(_)) => return None,
                                Ok(Err(error)) => error,
                                Err(error) => Error::from(error),
                            };
                            Some((Err(ended), (None, batches, None, stop)))
                        }
                    }
                }
            },
        );
        Ok(encode(schema, rows))
    }

    pub async fn update(
        &self,
        update: CommandStatementUpdate,
        request: Request<FlightDataStream>,
    ) -> Result<i64> {
        let (caller, path) = (caller_of(&request)?, database_path(&request)?);
        let (budget, _stop) = self.node.sql_budget(&request);
        let target = self.open(&caller, &path).await?;
        let changed = self
            .node
            .sql
            .execute_each(
                target.clone().into(),
                Query::new(update.query, vec![SqlParams::default()], budget),
            )
            .await?;
        Ok(changed as i64)
    }

    pub async fn prepare(
        &self,
        create: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult> {
        let (budget, _stop) = self.node.sql_budget(&request);
        let (caller, target) = self.target(&request).await?;
        let description = self
            .node
            .sql
            .describe(&target, Query::new(create.query.clone(), None, budget))
            .await?;
        Self::refuse_writes(&target, &description)?;
        let parameter_schema = Schema::new(
            description
                .parameters
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let name = if name.is_empty() {
                        format!("?{}", i + 1)
                    } else {
                        name.clone()
                    };
                    // SQLite parameters take any type.
                    Field::new(name, DataType::Null, true)
                })
                .collect::<Vec<_>>(),
        );
        let dataset_schema = schema_of(&description.columns);
        let handle = self.prepared.insert(Prepared {
            owner: caller.identity_id.clone(),
            database: target.path,
            sql: create.query,
            parameters: description.parameters,
            bound: Vec::new(),
        })?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: ipc_schema(&dataset_schema)?,
            parameter_schema: ipc_schema(&parameter_schema)?,
        })
    }

    pub fn close(
        &self,
        close: ActionClosePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<()> {
        let caller = caller_of(&request)?;
        self.prepared
            .close(&caller.identity_id, &close.prepared_statement_handle);
        Ok(())
    }

    /// The parameter rows a DoPut carries, bounded.
    async fn rows(
        request: Request<FlightDataStream>,
        prepared: &Prepared,
    ) -> Result<Vec<SqlParams>> {
        let mut batches = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            checked_flight_data(request.into_inner()),
        );
        let mut collected = Vec::new();
        let mut count = 0;
        while let Some(batch) = batches.try_next().await.map_err(flight_error)? {
            count += batch.num_rows();
            if count > MAX_BOUND_ROWS {
                return Err(Error::invalid_argument(format!(
                    "more than {MAX_BOUND_ROWS} parameter rows in one DoPut; split them"
                )));
            }
            collected.push(batch);
        }
        parameter_rows(&collected, &prepared.parameters)
    }

    pub async fn bind(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult> {
        let caller = caller_of(&request)?;
        let handle = query.prepared_statement_handle;
        let prepared = self.prepared.get(&caller.identity_id, &handle)?;
        let rows = Self::rows(request, &prepared).await?;
        self.prepared.bind(&caller.identity_id, &handle, rows)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    pub async fn prepared_update(
        &self,
        update: CommandPreparedStatementUpdate,
        request: Request<FlightDataStream>,
    ) -> Result<i64> {
        let (budget, _stop) = self.node.sql_budget(&request);
        let handle = &update.prepared_statement_handle;
        let (prepared, target) = self.prepared_target(&caller_of(&request)?, handle).await?;
        let mut rows = Self::rows(request, &prepared).await?;
        if rows.is_empty() {
            rows = prepared.bound.clone();
        }
        if rows.is_empty() {
            if !prepared.parameters.is_empty() {
                return Err(Error::invalid_argument(format!(
                    "the statement takes {} parameters: send them with the update or bind them first",
                    prepared.parameters.len()
                )));
            }
            rows.push(SqlParams::default());
        }
        let changed = self
            .node
            .sql
            .execute_each(
                target.clone().into(),
                Query::new(prepared.sql, rows, budget),
            )
            .await?;
        Ok(changed as i64)
    }

    /// FlightInfo for the catalog commands: their ticket is the command itself.
    pub async fn catalog_info(
        &self,
        command: Command,
        request: Request<FlightDescriptor>,
    ) -> Result<FlightInfo> {
        let schema = match &command {
            Command::CommandGetCatalogs(c) => (*c).into_builder().schema(),
            Command::CommandGetDbSchemas(c) => c.clone().into_builder().schema(),
            Command::CommandGetTables(c) => {
                self.target(&request).await?;
                c.clone().into_builder().schema()
            }
            Command::CommandGetTableTypes(c) => (*c).into_builder().schema(),
            _ => Arc::new(SqlInfoDataBuilder::schema().clone()),
        };
        info(
            &schema,
            command.into_any().encode_to_vec(),
            request.into_inner(),
        )
    }

    pub async fn catalog_data(
        &self,
        command: Command,
        request: Request<Ticket>,
    ) -> Result<BoxStream<'static, Result<FlightData, Status>>> {
        let (budget, _stop) = self.node.sql_budget(&request);
        let built = match command {
            Command::CommandGetCatalogs(c) => {
                let mut builder = c.into_builder();
                builder.append(CATALOG);
                builder.build()
            }
            Command::CommandGetDbSchemas(c) => {
                let mut builder = c.into_builder();
                builder.append(CATALOG, CATALOG);
                builder.build()
            }
            Command::CommandGetTableTypes(c) => {
                let mut builder = c.into_builder();
                builder.append("TABLE");
                builder.append("VIEW");
                builder.build()
            }
            Command::CommandGetTables(c) => {
                let (_, target) = self.target(&request).await?;
                let include_schema = c.include_schema;
                let mut builder = c.into_builder();
                for (name, kind) in self.node.sql.tables(&target, budget.clone()).await? {
                    let schema = if include_schema {
                        let sql = format!("SELECT * FROM \"{}\"", name.replace('"', "\"\""));
                        let description = (self.node.sql)
                            .describe(&target, Query::new(sql, None, budget.clone()))
                            .await?;
                        schema_of(&description.columns)
                    } else {
                        Arc::new(Schema::empty())
                    };
                    builder
                        .append(CATALOG, CATALOG, &name, kind.to_uppercase(), &schema)
                        .map_err(|e| Error::internal(format!("GetTables: {e}")))?;
                }
                builder.build()
            }
            Command::CommandGetSqlInfo(c) => {
                let read_only = match request.metadata().get(DATABASE_HEADER) {
                    Some(_) => self.target(&request).await?.1.read_only,
                    None => false,
                };
                sql_info(read_only)?.record_batch(c.info)
            }
            other => {
                return Err(Error::invalid_argument(format!(
                    "{} is not a catalog command",
                    other.type_url()
                )));
            }
        };
        let batch = built.map_err(|e| Error::internal(format!("catalog data: {e}")))?;
        Ok(encode(batch.schema(), futures::stream::iter([Ok(batch)])))
    }
}

fn sql_info(read_only: bool) -> Result<SqlInfoData> {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "Busbar");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    builder.append(SqlInfo::FlightSqlServerReadOnly, read_only);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    builder.append(SqlInfo::SqlDdlCatalog, false);
    builder.append(SqlInfo::SqlDdlSchema, false);
    builder.append(SqlInfo::SqlDdlTable, true);
    builder
        .build()
        .map_err(|e| Error::internal(format!("SqlInfo: {e}")))
}

fn database_path<T>(request: &Request<T>) -> Result<String> {
    let header = request.metadata().get(DATABASE_HEADER).ok_or_else(|| {
        Error::invalid_argument(format!(
            "Flight SQL calls name their database in the '{DATABASE_HEADER}: <resource path>' \
             header (ADBC: adbc.flight.sql.rpc.call_header.{DATABASE_HEADER})"
        ))
    })?;
    let path = header
        .to_str()
        .map_err(|_| Error::invalid_argument(format!("{DATABASE_HEADER} is not ASCII")))?;
    Ok(path.to_string())
}
