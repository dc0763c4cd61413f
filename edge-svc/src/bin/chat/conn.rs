//! TLS connections to the edges, and the interactive client's reconnect
//! loop.

use crate::model::reconnect_after;
use shared::tls::{self, Trust};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The first wait before connecting again, doubled after each failure up
/// to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A connection that lived this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a TLS connection to `server` (`host:port`).
pub async fn connect(server: &str, trust: &Trust) -> Result<TlsStream<TcpStream>, Error> {
    let host = server
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("{server}: a server is host:port"))?;
    let connector = TlsConnector::from(tls::client_config(trust)?);
    let name = tls::server_name(host)?;
    let open = async {
        let tcp = TcpStream::connect(server)
            .await
            .map_err(|e| format!("cannot connect to {server}: {e}"))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {server} failed: {e}"))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, open).await {
        Ok(stream) => Ok(stream?),
        Err(_) => Err(format!("{server}: no answer").into()),
    }
}

/// What the reconnect loop tells the interface.
#[derive(Debug)]
pub enum Net {
    Connected(String),
    Line(String),
    /// The connection is gone (or could not be opened); the next attempt is
    /// `retry`: (attempt number, delay), or none at all.
    Lost {
        why: String,
        retry: Option<(u32, Duration)>,
    },
}

/// Keeps a session open: connects to the servers in turn, sends `login`
/// first, then the lines from `outgoing`, and reports everything on
/// `events`. After a loss it waits (doubling backoff) and tries the next
/// server, unless the server said `BYE quit` or `BYE logged-in-elsewhere`.
pub async fn keep_open(
    servers: Vec<String>,
    trust: Trust,
    login: String,
    mut outgoing: mpsc::UnboundedReceiver<String>,
    events: mpsc::UnboundedSender<Net>,
) {
    let mut next = 0;
    let mut attempt = 0u32;
    let mut delay = BACKOFF_MIN;
    loop {
        let server = &servers[next % servers.len()];
        next += 1;
        attempt += 1;
        let why = match connect(server, &trust).await {
            Err(e) => e.to_string(),
            Ok(stream) => {
                attempt = 0;
                let since = Instant::now();
                // Lines typed for the connection that was lost are not
                // sent on this one before the login.
                while outgoing.try_recv().is_ok() {}
                if events.send(Net::Connected(server.clone())).is_err() {
                    return;
                }
                let (why, again) = session(stream, &login, &mut outgoing, &events).await;
                if !again {
                    let _ = events.send(Net::Lost { why, retry: None });
                    return;
                }
                if since.elapsed() > STABLE {
                    delay = BACKOFF_MIN;
                }
                why
            }
        };
        let retry = Some((attempt + 1, delay));
        if events.send(Net::Lost { why, retry }).is_err() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// One connection, until it ends: why it ended, and whether to reconnect.
async fn session(
    stream: TlsStream<TcpStream>,
    login: &str,
    outgoing: &mut mpsc::UnboundedReceiver<String>,
    events: &mpsc::UnboundedSender<Net>,
) -> (String, bool) {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = BufReader::new(rd).lines();
    if let Err(e) = wr.write_all(format!("{login}\n").as_bytes()).await {
        return (e.to_string(), true);
    }
    let mut bye: Option<String> = None;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Some(reason) = line.strip_prefix("BYE ") {
                        bye = Some(reason.to_string());
                    }
                    if events.send(Net::Line(line)).is_err() {
                        return ("closed".into(), false);
                    }
                }
                Ok(None) => {
                    return match bye {
                        Some(reason) => {
                            let again = reconnect_after(&reason);
                            (reason, again)
                        }
                        None => ("the server closed the connection".into(), true),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return ("the connection broke off".into(), true);
                }
                Err(e) => return (e.to_string(), true),
            },
            line = outgoing.recv() => match line {
                Some(line) => {
                    if let Err(e) = wr.write_all(format!("{line}\n").as_bytes()).await {
                        return (e.to_string(), true);
                    }
                }
                // The interface is gone.
                None => return ("closed".into(), false),
            },
        }
    }
}
