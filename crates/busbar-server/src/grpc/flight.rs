//! Arrow Flight on the node's own port and TLS. This module owns the
//! protocol's front door: `Handshake` (a login with the native API's
//! credentials) and the routing of every other call. A descriptor, ticket or
//! action that holds a Flight SQL message goes to [`super::flight_sql`];
//! anything else is plain Flight, which [`super::flight_series`] serves.
//!
//! The call layer has already authenticated every call but `Handshake`, so
//! handlers find the [`crate::auth::access::Caller`] on the request as everywhere.

use crate::auth::access::Caller;
use crate::error::{Error, ErrorCode, Result};
use crate::node::Node;
use crate::sql::flight_sql::FlightSql;
use crate::timeseries::flight as flight_series;
use arrow_array::RecordBatch;
use arrow_flight::FlightEndpoint;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, Any, Command,
    DoPutUpdateResult, ProstMessageExt,
};
use arrow_flight::{
    Action, ActionType, BasicAuth, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use arrow_schema::{Schema, SchemaRef};
use base64::Engine;
use futures::StreamExt;
use futures::TryStreamExt;
use futures::stream::BoxStream;
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

/// The gRPC service name, for health and the call layer.
pub const SERVICE_NAME: &str = "arrow.flight.protocol.FlightService";

const CREATE_PREPARED_STATEMENT: &str = "CreatePreparedStatement";
const CLOSE_PREPARED_STATEMENT: &str = "ClosePreparedStatement";

/// Flight data as handlers receive it: the first message (which carries the
/// descriptor) included.
pub type FlightDataStream = BoxStream<'static, Result<FlightData, Status>>;

pub struct BusbarFlight {
    node: Arc<Node>,
    sql: FlightSql,
}

impl BusbarFlight {
    pub fn new(node: Arc<Node>) -> BusbarFlight {
        BusbarFlight {
            sql: FlightSql::new(node.clone()),
            node,
        }
    }
}

/// Whether a Flight SQL command asks about the catalog (answered the same
/// way by GetFlightInfo and DoGet).
fn is_catalog(command: &Command) -> bool {
    matches!(
        command,
        Command::CommandGetCatalogs(_)
            | Command::CommandGetDbSchemas(_)
            | Command::CommandGetTables(_)
            | Command::CommandGetTableTypes(_)
            | Command::CommandGetSqlInfo(_)
    )
}

/// The Flight SQL command in `bytes`, if they hold one (an `Any` whose type
/// is in the Flight SQL package); `None` for anything else.
fn sql_command(bytes: &[u8]) -> Result<Option<Command>> {
    let Ok(any) = Any::decode(bytes) else {
        return Ok(None);
    };
    if !any
        .type_url
        .starts_with("type.googleapis.com/arrow.flight.protocol.sql.")
    {
        return Ok(None);
    }
    Command::try_from(any)
        .map(Some)
        .map_err(|e| Error::invalid_argument(format!("malformed Flight SQL command: {e}")))
}

fn unpack<M: ProstMessageExt>(body: &[u8], what: &str) -> Result<M> {
    Any::decode(body)
        .ok()
        .and_then(|any| any.unpack::<M>().ok().flatten())
        .ok_or_else(|| Error::invalid_argument(format!("the action body is not a {what}")))
}

/// A Flight SQL command Busbar does not serve, named, with what it does serve.
fn unsupported(command: &Command) -> Error {
    let name = command.type_url().rsplit('.').next().unwrap_or("command");
    Error {
        code: crate::error::ErrorCode::Unimplemented,
        message: format!(
            "Flight SQL {name} is not supported by Busbar; supported: statement queries and \
             updates, prepared statements, GetCatalogs, GetDbSchemas, GetTables, GetTableTypes, \
             GetSqlInfo"
        ),
    }
}

/// A request stream that failed while the handler read it.
fn receiving(status: Status) -> Error {
    Error {
        code: match status.code() {
            tonic::Code::Cancelled => crate::error::ErrorCode::Cancelled,
            _ => crate::error::ErrorCode::InvalidArgument,
        },
        message: format!("reading the request stream: {}", status.message()),
    }
}

fn one<T: Send + 'static>(item: T) -> BoxStream<'static, Result<T, Status>> {
    futures::stream::once(async move { Ok(item) }).boxed()
}

impl BusbarFlight {
    /// Logs in with the credentials of the handshake's `authorization`
    /// header (HTTP Basic `user:password`, or `Bearer bbt_…` API token) or,
    /// failing that, of a `BasicAuth` message in the first request's payload.
    async fn login(&self, request: Request<Streaming<HandshakeRequest>>) -> Result<String> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let auth = &self.node.auth;
        let peer = request.remote_addr().map(|a| a.ip());
        if let Some(header) = header {
            let (scheme, value) = header.split_once(' ').unwrap_or((&header, ""));
            let value = value.trim();
            if scheme.eq_ignore_ascii_case("basic") {
                // Padding optional: Go's Flight client sends it unpadded.
                let lenient = base64::engine::GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    base64::engine::GeneralPurposeConfig::new()
                        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
                );
                let decoded = lenient
                    .decode(value)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| {
                        Error::unauthenticated(
                            "the Basic authorization header is not base64 of user:password",
                        )
                    })?;
                let (user, password) = decoded.split_once(':').ok_or_else(|| {
                    Error::unauthenticated(
                        "the Basic authorization header holds no ':' between user and password",
                    )
                })?;
                return Ok(auth.login_password(user, password, peer).await?.1);
            }
            if scheme.eq_ignore_ascii_case("bearer") {
                return Ok(auth.login_token(value).await?.1);
            }
            return Err(Error::unauthenticated(format!(
                "unknown authorization scheme {scheme:?}: use Basic user:password or Bearer <bbt_ API token>"
            )));
        }
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await
            .map_err(receiving)?
            .unwrap_or_default();
        let basic = BasicAuth::decode(first.payload).unwrap_or_default();
        if basic.username.is_empty() {
            return Err(Error::unauthenticated(
                "Handshake needs credentials: an 'authorization: Basic <base64 user:password>' header \
                 (pyarrow authenticate_basic_token, ADBC username/password), a Bearer API token, \
                 or a BasicAuth payload",
            ));
        }
        Ok(auth
            .login_password(&basic.username, &basic.password, peer)
            .await?
            .1)
    }

    async fn put(&self, request: Request<Streaming<FlightData>>) -> Result<Response<PutStream>> {
        let (metadata, extensions, mut stream) = request.into_parts();
        let first = stream.message().await.map_err(receiving)?.ok_or_else(|| {
            Error::invalid_argument("DoPut sent no message; the first must carry a descriptor")
        })?;
        let descriptor = first.flight_descriptor.clone().ok_or_else(|| {
            Error::invalid_argument("the first DoPut message carries no flight descriptor")
        })?;
        let data: FlightDataStream = futures::stream::once(async move { Ok(first) })
            .chain(stream)
            .boxed();
        let command = sql_command(&descriptor.cmd)?;
        let request = Request::from_parts(metadata, extensions, data);
        let Some(command) = command else {
            return flight_series::do_put(&self.node, descriptor, request).await;
        };
        let sql = &self.sql;
        let result = match command {
            Command::CommandStatementUpdate(update) => DoPutUpdateResult {
                record_count: sql.update(update, request).await?,
            }
            .encode_to_vec(),
            Command::CommandPreparedStatementUpdate(update) => DoPutUpdateResult {
                record_count: sql.prepared_update(update, request).await?,
            }
            .encode_to_vec(),
            Command::CommandPreparedStatementQuery(query) => {
                sql.bind(query, request).await?.encode_to_vec()
            }
            other => return Err(unsupported(&other)),
        };
        Ok(Response::new(one(PutResult {
            app_metadata: result.into(),
        })))
    }
}

type PutStream = BoxStream<'static, Result<PutResult, Status>>;

#[tonic::async_trait]
impl FlightService for BusbarFlight {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = PutStream;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let session = self.login(request).await?;
        let mut response = Response::new(one(HandshakeResponse {
            protocol_version: 0,
            payload: session.clone().into(),
        }));
        let bearer = format!("Bearer {session}")
            .parse()
            .map_err(|_| Error::internal("session token is not a valid header value"))?;
        response.metadata_mut().insert("authorization", bearer);
        Ok(response)
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Ok(flight_series::list_flights(&self.node, request).await?)
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let Some(command) = sql_command(&request.get_ref().cmd)? else {
            return Ok(flight_series::get_flight_info(&self.node, request).await?);
        };
        let sql = &self.sql;
        let info = match command {
            Command::CommandStatementQuery(query) => sql.query_info(query, request).await?,
            Command::CommandPreparedStatementQuery(query) => {
                sql.prepared_query_info(query, request).await?
            }
            catalog if is_catalog(&catalog) => sql.catalog_info(catalog, request).await?,
            other => return Err(unsupported(&other).into()),
        };
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Error {
            code: crate::error::ErrorCode::Unimplemented,
            message: "PollFlightInfo is not supported: queries run on DoGet; use GetFlightInfo"
                .into(),
        }
        .into())
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let info = self.get_flight_info(request).await?.into_inner();
        Ok(Response::new(SchemaResult {
            schema: info.schema,
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let Some(command) = sql_command(&request.get_ref().ticket)? else {
            return Ok(flight_series::do_get(&self.node, request).await?);
        };
        let sql = &self.sql;
        let stream = match command {
            Command::TicketStatementQuery(ticket) => sql.run_ticket(ticket, request).await?,
            catalog if is_catalog(&catalog) => sql.catalog_data(catalog, request).await?,
            other => return Err(unsupported(&other).into()),
        };
        Ok(Response::new(stream))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Ok(self.put(request).await?)
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Error {
            code: crate::error::ErrorCode::Unimplemented,
            message: "DoExchange is not supported".into(),
        }
        .into())
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let kind = request.get_ref().r#type.clone();
        match kind.as_str() {
            CREATE_PREPARED_STATEMENT => {
                let create: ActionCreatePreparedStatementRequest = unpack(
                    &request.get_ref().body,
                    "ActionCreatePreparedStatementRequest",
                )?;
                let created = self.sql.prepare(create, request).await?;
                Ok(Response::new(one(arrow_flight::Result {
                    body: created.as_any().encode_to_vec().into(),
                })))
            }
            CLOSE_PREPARED_STATEMENT => {
                let close: ActionClosePreparedStatementRequest = unpack(
                    &request.get_ref().body,
                    "ActionClosePreparedStatementRequest",
                )?;
                self.sql.close(close, request)?;
                Ok(Response::new(futures::stream::empty().boxed()))
            }
            _ => Ok(flight_series::do_action(&self.node, request).await?),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            (
                CREATE_PREPARED_STATEMENT,
                "Flight SQL: prepares a statement on the database named by x-busbar-database.\n\
                 Request: ActionCreatePreparedStatementRequest; result: ActionCreatePreparedStatementResult",
            ),
            (
                CLOSE_PREPARED_STATEMENT,
                "Flight SQL: closes a prepared statement.\nRequest: ActionClosePreparedStatementRequest",
            ),
        ]
        .map(|(kind, description)| {
            Ok(ActionType {
                r#type: kind.into(),
                description: description.into(),
            })
        });
        Ok(Response::new(
            futures::stream::iter(actions)
                .chain(futures::stream::iter(
                    flight_series::list_actions(&self.node).into_iter().map(Ok),
                ))
                .boxed(),
        ))
    }
}

// --- shared by both Flight services (SQL and time series) ---

/// A client's FlightData, each message checked (busbar-ipc) before
/// arrow-flight decodes it: arrow-ipc panics on a buffer outside its body.
pub(crate) fn checked_flight_data(
    data: FlightDataStream,
) -> impl futures::Stream<Item = std::result::Result<arrow_flight::FlightData, FlightError>> {
    data.map(|message| {
        let message = message.map_err(FlightError::from)?;
        busbar_ipc::check_flight_message(&message.data_header, message.data_body.len())
            .map_err(|e| FlightError::ProtocolError(e.to_string()))?;
        Ok(message)
    })
}

pub(crate) fn flight_error(error: FlightError) -> Error {
    match error {
        FlightError::Tonic(status) => Error {
            code: match status.code() {
                tonic::Code::Cancelled => ErrorCode::Cancelled,
                _ => ErrorCode::InvalidArgument,
            },
            message: status.message().to_string(),
        },
        other => Error::invalid_argument(format!("bad Flight data: {other}")),
    }
}

/// Batches as a FlightData stream that starts with `schema` even when no batch follows.
pub(crate) fn encode(
    schema: SchemaRef,
    batches: impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
) -> BoxStream<'static, Result<FlightData, Status>> {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches.map_err(|e| FlightError::Tonic(Box::new(e.into()))))
        .map_err(Status::from)
        .boxed()
}

pub(crate) fn info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Error::internal(format!("encoding a schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

pub(crate) fn caller_of<T>(request: &Request<T>) -> Result<Caller> {
    request.extensions().get::<Caller>().cloned().ok_or_else(|| {
        Error::unauthenticated(
            "this Flight call needs credentials: Handshake, then send 'authorization: Bearer <token>'",
        )
    })
}
