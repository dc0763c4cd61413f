//! The plain-HTTP admin port every service serves: `GET /healthz` (200
//! while the service's Redis answers, else 503), `GET /metrics`
//! (Prometheus text format) and, on an edge, `POST /drain`. A few lines of HTTP/1.1, enough for probes
//! and scrapers; one request per connection. A `POST` that names an
//! `Origin` (a web page's, which every browser sends) is refused: a page
//! on the operator's machine must not drain an edge.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What a service tells its admin port.
pub trait Probe: Send + Sync + 'static {
    /// Whether the service can do its work (its Redis answers).
    fn healthy(&self) -> impl Future<Output = bool> + Send;
    /// Its metrics, in Prometheus text format.
    fn metrics(&self) -> impl Future<Output = String> + Send;
    /// Starts draining (`POST /drain`); false: the service does not drain.
    fn drain(&self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// Serves `probe` on `listener` until `shutdown`, a few requests at a time
/// (more are closed at once).
pub async fn serve<P: Probe>(listener: TcpListener, probe: Arc<P>, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    continue; // dropped: closed
                };
                let probe = probe.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(TIMEOUT, answer(stream, &*probe)).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What became of a service's admin port.
#[derive(Debug)]
pub enum AdminPort {
    /// `admin_listen` is empty: no admin port wanted.
    Off,
    /// Bound: [`serve`] it.
    Bound(TcpListener),
    /// `addr` could not be bound (most often another service on this host
    /// has it, say a second router beside `make up`). The service serves
    /// anyway, without `/healthz` and `/metrics`.
    Unbound { addr: String, error: std::io::Error },
}

impl AdminPort {
    /// The listener to serve, if bound.
    pub fn listener(self) -> Option<TcpListener> {
        match self {
            AdminPort::Bound(listener) => Some(listener),
            AdminPort::Off | AdminPort::Unbound { .. } => None,
        }
    }
}

/// Binds the admin port, unless `addr` is empty (off). An address that
/// cannot be bound is never a reason not to serve: it is logged as a
/// warning naming the address, and the service goes on without an admin
/// port ([`AdminPort::Unbound`]).
pub async fn bind(addr: &str) -> AdminPort {
    if addr.is_empty() {
        return AdminPort::Off;
    }
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            let local = listener
                .local_addr()
                .map_or_else(|_| addr.to_string(), |a| a.to_string());
            tracing::info!(addr = %local, "admin port (/healthz, /metrics)");
            AdminPort::Bound(listener)
        }
        Err(error) => {
            tracing::warn!(
                %error,
                "admin port {addr} not bound; serving without /healthz and /metrics \
                 (set admin_listen to a free port, or empty for none)"
            );
            AdminPort::Unbound {
                addr: addr.to_string(),
                error,
            }
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);
/// Admin requests served at once.
const AT_ONCE: usize = 8;

async fn answer(mut stream: TcpStream, probe: &impl Probe) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (status, kind, body) = match (words.next(), words.next()) {
        (Some("GET"), Some("/healthz")) => {
            if probe.healthy().await {
                ("200 OK", "text/plain", "ok\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    "redis unreachable\n".to_string(),
                )
            }
        }
        (Some("GET"), Some("/metrics")) => {
            ("200 OK", "text/plain; version=0.0.4", probe.metrics().await)
        }
        (Some("POST"), _) if has_header(&head, "origin") => (
            "403 Forbidden",
            "text/plain",
            "not from a web page\n".to_string(),
        ),
        (Some("POST"), Some("/drain")) if probe.drain().await => {
            ("200 OK", "text/plain", "draining\n".to_string())
        }
        _ => (
            "404 Not Found",
            "text/plain",
            "try /healthz or /metrics\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Whether the request head `head` has header `name` (lower case).
fn has_header(head: &str, name: &str) -> bool {
    head.lines().skip(1).any(|line| {
        line.split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })
}

/// Whether Redis answers a `PING` within a second.
pub async fn redis_answers(conn: &crate::store::Conn) -> bool {
    let mut conn = conn.clone();
    let cmd = redis::cmd("PING");
    let ping = cmd.query_async::<String>(&mut conn);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ping).await,
        Ok(Ok(_))
    )
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency buckets: 0.1 ms to 10 s.
const BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, and a last one for what is above them all.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Builds a Prometheus text page.
#[derive(Default)]
pub struct Page(String);

impl Page {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.head(name, help, "counter");
        let _ = writeln!(self.0, "{name} {value}");
        self
    }

    /// A counter with one label, one line per value of it.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) -> &mut Self {
        self.head(name, help, "counter");
        for (v, n) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{v}\"}} {n}");
        }
        self
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> &mut Self {
        self.head(name, help, "gauge");
        let _ = writeln!(self.0, "{name} {value}");
        self
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.head(name, help, "histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BOUNDS.iter().zip(&h.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        // The total of the same reads, so that +Inf and _count agree.
        let count = cumulative + h.buckets[BOUNDS.len()].load(Ordering::Relaxed);
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.0, "{name}_sum {sum}\n{name}_count {count}");
        self
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_admin_port_is_reported_not_fatal() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap().to_string();
        match bind(&addr).await {
            AdminPort::Unbound { addr: named, error } => {
                assert_eq!(named, addr);
                assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
            }
            other => panic!("expected Unbound, got {other:?}"),
        }
        assert!(bind(&addr).await.listener().is_none());
        assert!(matches!(bind("").await, AdminPort::Off));
        let free = bind("127.0.0.1:0").await;
        assert!(free.listener().is_some(), "a free port is bound");
    }

    /// A probe that counts the drains asked of it.
    #[derive(Default)]
    struct Drains(AtomicU64);

    impl Probe for Drains {
        async fn healthy(&self) -> bool {
            true
        }
        async fn metrics(&self) -> String {
            String::new()
        }
        async fn drain(&self) -> bool {
            self.0.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    #[tokio::test]
    async fn a_drain_from_a_web_page_is_refused() {
        let listener = bind("127.0.0.1:0").await.listener().unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = Arc::new(Drains::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, probe.clone(), stop.clone()));
        let post = |extra: &'static str| async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let head = format!("POST /drain HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let page = post("Origin: http://evil.example\r\n").await;
        assert!(page.starts_with("HTTP/1.1 403 "), "{page}");
        assert_eq!(probe.0.load(Ordering::Relaxed), 0, "not drained");
        let operator = post("").await;
        assert!(operator.starts_with("HTTP/1.1 200 "), "{operator}");
        assert_eq!(probe.0.load(Ordering::Relaxed), 1);
        stop.cancel();
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let text = Page::default().histogram("x_seconds", "test", &h).finish();
        assert!(
            text.contains("x_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_count 3\n"), "{text}");
    }
}
