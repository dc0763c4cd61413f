//! edge-svc: the TLS edge that holds client connections.
//!
//! The edge keeps no shared state: only its own connection table ([`hub`]).
//! It forwards logins to auth-svc and every other command to router-svc
//! over Redis streams, and receives replies and room traffic over Redis
//! Pub/Sub on one connection.
//!
//! [`run`] (in `listener`) accepts connections; each is served by
//! `connection`; the Pub/Sub task (`pubsub`) applies what comes back
//! through the [`hub`].
#![forbid(unsafe_code)]

mod connection;
mod ctx;
mod drain;
mod error;
pub mod frame;
mod heartbeat;
mod hub;
mod intake;
mod limits;
mod listener;
mod metrics;
mod pubsub;
mod resync;
mod shard;

pub use error::{EdgeError, Phase};
pub use listener::run;
