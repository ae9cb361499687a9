//! End-to-end tests: each starts a real `busbar serve` process on loopback
//! (free port, temp data dir, TLS on) and talks to it over the network.

mod auth;
mod authorization;
mod blocking;
mod gateway;
mod harness;
mod lifecycle;
mod mesh;
mod mtls;
mod resources;
mod robustness;
mod rooms;
mod security;
mod sessions;
mod sql;
mod timeseries;
mod transport;
mod wires;
