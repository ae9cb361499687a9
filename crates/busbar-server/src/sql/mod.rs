//! SQL databases, one job in one place: the engine that owns every
//! connection and transaction of a DATABASE resource (`engine`, with its
//! sandbox, prepared statements, stored procedures and the writer pool),
//! data sessions (a transaction held across calls), and the services that
//! reach it: `busbar.v1.Sql`, `busbar.v1.Sessions` and Flight SQL.

mod engine;
pub mod flight_sql;
mod flight_statements;
mod prepared;
pub mod procedures;
pub mod sandbox;
pub mod service;
pub mod sessions;
pub mod sessions_service;
pub(crate) mod writers;

pub(crate) use engine::run_each;
pub use engine::{Description, SqlDatabases, SqlParam, SqlParams, SqlSummary, execute_on};
pub use sandbox::{Budget, StopOnDrop};
