//! The Busbar server as a library: [`serve`] runs a node from a
//! [`ServerConfig`]. The `busbar` binary's `serve` command calls it.
//!
//! The crate is arranged by job (docs/architecture.md): `auth`, `resources`,
//! `rooms`, `wires`, `sql`, `timeseries`, `node` (status and lifecycle),
//! each with its gRPC service; `store` (metadata) and `bus` are the seams
//! to the backends; `grpc` holds what the services share.

mod auth;
mod bootstrap;
mod bus;
mod calls;
mod cluster;
pub mod config;
mod console;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod grpc;
mod mesh;
mod metrics;
mod node;
mod resources;
mod rooms;
mod server;
mod sessions;
mod sql;
mod store;
mod timeseries;
pub mod tls;
mod transport;
mod wires;

pub use config::{GatewayConfig, ServerConfig, Settings};
pub use error::{Error, ErrorCode, Result};
pub use server::{Started, serve};
