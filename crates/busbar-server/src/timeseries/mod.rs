//! Time series, one job in one place: the model and storage (`store`), the
//! points' wire format (`points_wire`), and the services that reach it:
//! `busbar.v1.TimeSeries` and its Arrow Flight tickets.

pub mod flight;
pub mod points_wire;
pub mod service;
pub mod store;

pub use store::TimeSeriesStore;
