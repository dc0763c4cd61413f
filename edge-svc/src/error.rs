//! The edge's errors: [`EdgeError`], and the [`Phase`] of a connection it happened in.

/// The phase of a connection an I/O error or timeout happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Handshake,
    Read,
    Write,
    Close,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Handshake => "handshake",
            Phase::Read => "read",
            Phase::Write => "write",
            Phase::Close => "close",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{0} timed out")]
    Timeout(Phase),
    #[error("{phase}: {source}")]
    Io {
        phase: Phase,
        source: std::io::Error,
    },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis TLS settings: {0}")]
    RedisTls(shared::tls::TlsError),
}
