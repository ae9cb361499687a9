//! What the gRPC services of every job share: the reply type, the call
//! layer (authentication, metrics, deadlines), the codecs for the hot paths,
//! reading Arrow IPC from requests, and the Arrow Flight router, which hands
//! each ticket or command to the job it names (SQL or time series).

pub mod flight;
pub(crate) mod ipc;
pub(crate) mod layer;
pub(crate) mod zero_copy;

use tonic::{Response, Status};

pub(crate) type Reply<T> = Result<Response<T>, Status>;

pub(crate) fn reply<T>(value: T) -> Reply<T> {
    Ok(Response::new(value))
}
