//! The Rust client for Busbar.
//!
//! The async [`Client`] is the real one; [`blocking::Client`] wraps it with a
//! runtime of its own and the same method names.
//!
//! ```no_run
//! # async fn demo() -> busbar_client::Result<()> {
//! use busbar_client::Client;
//! let client = Client::from_config_file("busbar-data/admin.json").await?;
//! println!("{:?}", client.status().await?);
//! let reply = client.call("busbar.v1.Node/Status", serde_json::json!({})).await?;
//! println!("{reply}");
//! # Ok(()) }
//! ```

mod api;
pub mod blocking;
mod client;
mod config;
mod dynamic;
mod error;
mod json;
mod mesh;
mod mesh_json;
mod mesh_schema;
mod pieces;
mod point_columns;
mod rooms;
mod sessions;
pub mod spin;
mod sql;
mod timeseries;
mod tls;
mod transport;
mod wires;

pub use api::{
    BoxStream, Grant, Identity, NodeEvent, NodeStatus, Resource, ResourceKind, Right, TokenInfo,
};
pub use busbar_proto::v1::{ProviderInfo, ServiceInfo};
pub use client::{Client, ConnectOptions, Credential, Io, Transport};
pub use config::{ClientCertificateConfig, ClientConfig, CredentialConfig};
pub use dynamic::{CallSender, DynamicCall, MethodKind, Responder, to_json_text};
pub use error::{Error, ErrorCode, Result};
pub use mesh::{CallContext, CallRequests, CallResponses, Offer, Provided, ProviderCall};
pub use mesh_json::JsonCall;
pub use mesh_schema::{
    FieldSchema, InterfaceSchema, MessageSchema, MethodSchema, REPLY_FIELD, TypeSchema,
    interface_descriptors,
};
pub use rooms::{EmitStreamSummary, RoomEmitter, RoomEvent, RoomEventKind, RoomMembership};
pub use sessions::{Session, SessionEnded};
pub use sql::{
    ExecuteSummary, Procedure, ProcedureArgs, SqlColumn, SqlParam, SqlResult, Statement,
};
#[doc(hidden)]
pub use timeseries::fuzz_series_read;
pub use timeseries::{
    Curve, Interval, POINTS_SCHEMA, Resolution, SeriesChunk, SeriesData, SeriesInfo, SeriesSpec,
    WriteSeriesResponse, curve_name, flags, parse_curve, parse_resolution, points, resolution_name,
};
pub use tls::NewCertificate;
pub use transport::{TransportMessage, TransportSession};
pub use wires::{PublishSummary, RESUMING_QUEUE, WireEvent};

/// The generated protocol types, for fields this API does not wrap.
pub use busbar_proto::v1 as proto;
