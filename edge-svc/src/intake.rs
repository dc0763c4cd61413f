//! The Pub/Sub connection's intake, bounded in bytes: what Redis sent and the edge has not applied yet.
//!
//! The redis crate's Pub/Sub connection reads the socket in a task of its
//! own and hands every message over through an unbounded channel, so an
//! edge that falls behind (its CPU saturated, or its Pub/Sub task waiting
//! on a replay) would buffer without limit. Here the socket is read
//! through [`Metered`], which counts the bytes read; the Pub/Sub task
//! counts off each message it applies. Past the budget the read fails,
//! which ends the connection: the edge connects again and catches up from
//! history (`GAP` past `edge.replay_max`), the same as after any loss of
//! its Pub/Sub connection.

use redis::aio::PubSub;
use redis::{Client, ConnectionAddr, RedisResult};
use shared::config::RedisConfig;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

/// Longest wait for Redis to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes read from a Pub/Sub connection and not yet applied, and whether
/// they went over `max`.
#[derive(Debug)]
pub(crate) struct Backlog {
    bytes: AtomicUsize,
    max: usize,
    overflowed: AtomicBool,
}

impl Backlog {
    pub(crate) fn new(max: usize) -> Arc<Backlog> {
        Arc::new(Backlog {
            bytes: AtomicUsize::new(0),
            max,
            overflowed: AtomicBool::new(false),
        })
    }

    /// Counts off a message applied (its size on the wire).
    pub(crate) fn applied(&self, channel: &str, payload: &[u8]) {
        let n = wire_size(channel.len(), payload.len());
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(n))
            });
    }

    /// Everything read has been applied (nothing is waiting): what the
    /// count has left is subscription confirmations and `PONG`s.
    pub(crate) fn drained(&self) {
        self.bytes.store(0, Ordering::Relaxed);
    }

    /// Whether the last connection ended for going over the budget (and
    /// forgets it).
    pub(crate) fn take_overflow(&self) -> bool {
        self.overflowed.swap(false, Ordering::Relaxed)
    }

    /// Counts a message taken in (on a cluster, where messages come as
    /// pushes rather than bytes read): `Some(true)` if within the budget,
    /// `Some(false)` if it goes over it (dropped), `None` while over it
    /// (dropped: until the edge has applied what it took in, then
    /// [`Backlog::take_overflow`] and [`Backlog::drained`]).
    pub(crate) fn take(&self, channel: &str, payload: &[u8]) -> Option<bool> {
        if self.overflowed.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.read(wire_size(channel.len(), payload.len())).is_ok())
    }

    /// Counts `n` bytes read; an error once over the budget.
    fn read(&self, n: usize) -> io::Result<()> {
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.max {
            self.overflowed.store(true, Ordering::Relaxed);
            return Err(io::Error::other(
                "Pub/Sub backlog over edge.pubsub_backlog_bytes",
            ));
        }
        Ok(())
    }
}

/// The size of a Pub/Sub message on the wire (RESP2 `*3`, or a RESP3 `>3`
/// push: the same): `message`, the channel and the payload, each a bulk
/// string.
fn wire_size(channel: usize, payload: usize) -> usize {
    let bulk = |n: usize| 1 + n.to_string().len() + 2 + n + 2;
    4 + bulk("message".len()) + bulk(channel) + bulk(payload)
}

/// A socket whose reads count against a [`Backlog`].
pub(crate) struct Metered<S> {
    inner: S,
    backlog: Arc<Backlog>,
}

impl<S> Metered<S> {
    pub(crate) fn new(inner: S, backlog: Arc<Backlog>) -> Metered<S> {
        Metered { inner, backlog }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        Poll::Ready(self.backlog.read(buf.filled().len() - before))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where the Pub/Sub connections go: the client's Redis, over TLS for
/// `rediss://` (with the same settings as the client's).
#[derive(Clone)]
pub(crate) struct PubSubSource {
    client: Client,
    tls: Option<TlsConnector>,
}

impl PubSubSource {
    pub(crate) fn new(
        client: Client,
        cfg: &RedisConfig,
    ) -> Result<PubSubSource, shared::tls::TlsError> {
        let tls = match client.get_connection_info().addr() {
            ConnectionAddr::TcpTls { .. } => {
                let c = shared::tls::redis_client_config(
                    &cfg.ca_file,
                    &cfg.client_cert,
                    &cfg.client_key,
                )?;
                Some(TlsConnector::from(c))
            }
            _ => None,
        };
        Ok(PubSubSource { client, tls })
    }
}

/// A new Pub/Sub connection to `source`'s Redis, its reads counted
/// against `backlog` (which starts again from zero).
pub(crate) async fn connect(source: &PubSubSource, backlog: &Arc<Backlog>) -> RedisResult<PubSub> {
    backlog.drained();
    let info = source.client.get_connection_info();
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connecting to Redis");
    let connecting = async {
        match (info.addr(), &source.tls) {
            (ConnectionAddr::Tcp(host, port), _) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                let tcp = Metered::new(tcp, backlog.clone());
                PubSub::new(info.redis_settings(), tcp).await
            }
            (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                let name = shared::tls::server_name(host).map_err(io::Error::other)?;
                let stream = Metered::new(tls.connect(name, tcp).await?, backlog.clone());
                PubSub::new(info.redis_settings(), stream).await
            }
            #[cfg(unix)]
            (ConnectionAddr::Unix(path), _) => {
                let unix = tokio::net::UnixStream::connect(path).await?;
                let unix = Metered::new(unix, backlog.clone());
                PubSub::new(info.redis_settings(), unix).await
            }
            (other, _) => {
                Err(io::Error::other(format!("unsupported Redis address {other}")).into())
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| timed_out())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_message_counts_its_wire_size() {
        // *3\r\n $7\r\nmessage\r\n $2\r\nch\r\n $5\r\nhello\r\n
        let wire = "*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n";
        assert_eq!(wire_size(2, 5), wire.len());
        let backlog = Backlog::new(1000);
        backlog.read(wire.len() + 10).unwrap();
        backlog.applied("ch", b"hello");
        assert_eq!(backlog.bytes.load(Ordering::Relaxed), 10);
        backlog.applied("ch", b"hello");
        assert_eq!(backlog.bytes.load(Ordering::Relaxed), 0, "never below 0");
    }

    #[tokio::test]
    async fn reads_fail_once_over_the_budget_until_applied() {
        let (mut redis, edge) = tokio::io::duplex(64 * 1024);
        let backlog = Backlog::new(100);
        let mut edge = Metered::new(edge, backlog.clone());
        let mut buf = vec![0u8; 1024];
        redis.write_all(&[b'x'; 60]).await.unwrap();
        assert_eq!(edge.read(&mut buf).await.unwrap(), 60);
        backlog.bytes.fetch_sub(30, Ordering::Relaxed); // 30 applied
        redis.write_all(&[b'x'; 70]).await.unwrap();
        assert_eq!(
            edge.read(&mut buf).await.unwrap(),
            70,
            "100 waiting: at the budget"
        );
        assert!(!backlog.take_overflow());
        redis.write_all(b"y").await.unwrap();
        let over = edge.read(&mut buf).await.unwrap_err();
        assert!(over.to_string().contains("pubsub_backlog_bytes"), "{over}");
        assert!(backlog.take_overflow(), "said once");
        assert!(!backlog.take_overflow());
        backlog.drained();
        redis.write_all(b"z").await.unwrap();
        assert_eq!(edge.read(&mut buf).await.unwrap(), 1, "a new start");
    }

    #[tokio::test]
    async fn a_connection_that_falls_behind_ends_at_its_budget() {
        use e2e::{TestRedis, WAIT};
        use futures_util::StreamExt;
        let redis = TestRedis::start().await;
        let client = shared::store::client(&redis.url(), &Default::default()).unwrap();
        let source = PubSubSource::new(client.clone(), &Default::default()).unwrap();
        const BUDGET: usize = 64 * 1024;
        let backlog = Backlog::new(BUDGET);
        let (mut sink, mut stream) = connect(&source, &backlog).await.unwrap().split();
        sink.subscribe("flood").await.unwrap();
        // About 1 MB published while the edge applies nothing.
        let payload = "x".repeat(1000);
        let mut pipe = redis::pipe();
        for _ in 0..1000 {
            pipe.publish("flood", &payload).ignore();
        }
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = pipe.query_async(&mut conn).await.unwrap();
        // The connection ends, having taken in no more than the budget.
        let mut taken = 0;
        while tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("the connection ends")
            .is_some()
        {
            taken += 1;
        }
        assert!(taken * payload.len() <= BUDGET, "{taken} messages taken in");
        assert!(backlog.take_overflow());
    }
}
