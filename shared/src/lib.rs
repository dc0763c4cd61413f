//! Common code of the chat services: the wire protocol, Redis key names,
//! envelopes and request streams, configuration loading, TLS helpers,
//! logging, shutdown and the `main` of a service binary.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod consumer;
pub mod envelope;
pub mod identity;
pub mod keys;
pub mod line;
pub mod placement;
pub mod protocol;
pub mod scripts;
pub mod seal;
pub mod service;
pub mod shutdown;
pub mod steps;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
