//! The Busbar server as a library: configuration, the `Store` and `Bus`
//! seams, authentication, access control, and the gRPC services of
//! `busbar.v1`. The `busbar` binary's `serve` command calls [`serve`].

pub mod access;
pub mod auth;
pub mod bootstrap;
pub mod bus;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod layer;
pub mod login_throttle;
pub mod metrics;
pub mod node;
pub mod paths;
mod server;
pub mod services;
pub mod sessions;
pub mod store;
pub mod tls;

pub use config::{ServerConfig, Settings};
pub use error::{Error, ErrorCode, Result};
pub use server::{Started, serve};
