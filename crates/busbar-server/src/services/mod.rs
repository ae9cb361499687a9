//! The gRPC services of `busbar.v1`, one module each.

pub mod auth;
pub mod flight;
pub mod flight_series;
pub mod flight_sql;
mod flight_statements;
pub(crate) mod ipc;
pub mod node;
mod one_method;
pub mod resources;
pub mod rooms;
pub mod sessions;
pub mod sql;
pub mod timeseries;
pub mod wires;
mod zero_copy;

use tonic::{Response, Status};

pub(crate) type Reply<T> = Result<Response<T>, Status>;

pub(crate) fn reply<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}
