//! Plain Arrow Flight: time series addressed by `FlightDescriptor.for_path`
//! or a JSON `for_command`. Every descriptor, ticket and action that is not
//! Flight SQL lands here (see [`super::flight`]). Not built yet: each call
//! says so, and `ListFlights` lists nothing.

use super::flight::FlightDataStream;
use crate::error::{Error, ErrorCode, Result};
use crate::node::Node;
use arrow_flight::{
    Action, ActionType, Criteria, FlightData, FlightDescriptor, FlightInfo, PutResult, Ticket,
};
use futures::stream::BoxStream;
use tonic::{Request, Response, Status};

fn not_built() -> Error {
    Error {
        code: ErrorCode::Unimplemented,
        message: "time series over Flight is not built yet; for SQL use Flight SQL commands \
                  with the x-busbar-database header"
            .into(),
    }
}

/// The series the caller may read: none until time series exist.
pub async fn list_flights(
    _node: &Node,
    _request: Request<Criteria>,
) -> Result<Response<BoxStream<'static, Result<FlightInfo, Status>>>> {
    Ok(Response::new(Box::pin(futures::stream::empty())))
}

pub async fn get_flight_info(
    _node: &Node,
    _request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>> {
    Err(not_built())
}

pub async fn do_get(
    _node: &Node,
    _request: Request<Ticket>,
) -> Result<Response<BoxStream<'static, Result<FlightData, Status>>>> {
    Err(not_built())
}

/// `data` still holds the first message (descriptor and schema).
pub async fn do_put(
    _node: &Node,
    _descriptor: FlightDescriptor,
    _data: Request<FlightDataStream>,
) -> Result<Response<BoxStream<'static, Result<PutResult, Status>>>> {
    Err(not_built())
}

/// Actions other than Flight SQL's.
pub async fn do_action(
    _node: &Node,
    request: Request<Action>,
) -> Result<Response<BoxStream<'static, Result<arrow_flight::Result, Status>>>> {
    Err(Error::invalid_argument(format!(
        "unknown Flight action {:?}; ListActions lists the ones this node serves",
        request.get_ref().r#type
    )))
}

/// Actions this module serves, for `ListActions`.
pub fn list_actions(_node: &Node) -> Vec<ActionType> {
    Vec::new()
}
