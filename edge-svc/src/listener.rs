//! The accept loop: [`run`] starts the edge; a [`Listener`] admits connections, then drains them.

use crate::connection;
use crate::ctx::Ctx;
use crate::error::{EdgeError, Phase};
use crate::heartbeat::{end_orphans, heartbeat, renew_tokens};
use crate::hub::Hub;
use crate::intake::{Backlog, PubSubSource};
use crate::limits::{AcceptRate, Bucket, Refusal};
use crate::pubsub::{deliver, deliver_sharded, subscribe};
use crate::shard::ShardFeed;
use redis::aio::{PubSubSink, PubSubStream};
use shared::config::Config;
use shared::store::Source;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connections over the caps that are told so at once; past this, they
/// are closed without a word.
const REFUSALS: usize = 16;

/// Most addresses whose accept rate is tracked at once (see [`AcceptRate`]).
const ACCEPT_RATE_ADDRS: usize = 100_000;

/// Where the edge's two channels are read from.
enum Feed {
    Node(Box<(PubSubSource, (PubSubSink, PubSubStream))>),
    Cluster(ShardFeed),
}

/// Serves clients on `listener` until `shutdown`; then says
/// `BYE server-shutdown` to every client, ends their sessions and returns.
pub async fn run(
    listener: TcpListener,
    cfg: Config,
    tls: Arc<rustls::ServerConfig>,
    sealer: shared::seal::Sealer,
    shutdown: CancellationToken,
) -> Result<(), EdgeError> {
    let redis = shared::store::Redis::connect(&cfg).await?;
    let keys = redis.keys.clone();
    // A busy admin port is logged, not fatal: the edge serves anyway.
    let admin = shared::admin::bind(&cfg.edge.admin_listen).await.listener();
    let (hub, orphans) = Hub::new(&keys, &cfg.edge.id);
    let backlog = Backlog::new(cfg.edge.pubsub_backlog_bytes);
    let channels = [
        keys.edge_channel(&cfg.edge.id),
        keys.lines_channel(&cfg.edge.id),
    ];
    let feed = match &redis.source {
        Source::Node(client) => {
            let source =
                PubSubSource::new(client.clone(), &cfg.redis).map_err(EdgeError::RedisTls)?;
            let pubsub = subscribe(&source, &channels, &backlog).await?;
            Feed::Node(Box::new((source, pubsub)))
        }
        Source::Cluster(seeds, settings) => {
            let builder = shared::store::cluster_client(seeds, settings)?;
            Feed::Cluster(ShardFeed::subscribe(builder, &channels, backlog.clone()).await?)
        }
    };
    let bound = listener.local_addr().map_err(|source| EdgeError::Io {
        phase: Phase::Handshake,
        source,
    })?;
    let public_addr = cfg.edge.public_addr(bound);
    let ctx = Arc::new(Ctx::new(cfg, &redis, hub.clone(), tls, public_addr, sealer));
    // Sessions a previous run under this id left (it was killed) end now;
    // subscribed first, so that a late answer to that run is seen.
    let left = ctx.beat(true).await?;
    if left > 0 {
        tracing::info!(sessions = left, "ended sessions left by a previous run");
    }
    let background = CancellationToken::new();
    match feed {
        Feed::Node(node) => tokio::spawn(deliver(
            node.0,
            backlog,
            channels,
            node.1,
            ctx.clone(),
            background.clone(),
        )),
        Feed::Cluster(feed) => tokio::spawn(deliver_sharded(feed, ctx.clone(), background.clone())),
    };
    tokio::spawn(end_orphans(ctx.clone(), orphans));
    tokio::spawn(heartbeat(ctx.clone(), background.clone()));
    tokio::spawn(renew_tokens(ctx.clone(), background.clone()));
    if let Some(admin) = admin {
        tokio::spawn(shared::admin::serve(admin, ctx.clone(), background.clone()));
    }
    tokio::spawn(crate::drain::drain(ctx.clone()));
    // A stop (or `POST /drain`) drains first: new clients are still told
    // where to go (and closed) while the clients are moved; then accepting
    // stops and the edge exits. All within shutdown_grace_ms of the signal
    // or the request.
    let stop = CancellationToken::new();
    let (deadline_tx, deadline) = tokio::sync::oneshot::channel();
    tokio::spawn({
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = ctx.drain.cancelled() => {}
            }
            let _ = deadline_tx.send(Instant::now() + ctx.cfg.shutdown_grace());
            ctx.drain.cancel();
            let moved = ctx.drained.cancelled();
            if tokio::time::timeout(crate::drain::longest(&ctx), moved)
                .await
                .is_err()
            {
                tracing::warn!("the drain did not finish in time");
            }
            stop.cancel();
        }
    });
    tracing::info!(id = %ctx.cfg.edge.id, addr = %bound, public = %ctx.public_addr, "edge-svc ready");
    let listener = Listener {
        listener,
        ctx,
        tracker: TaskTracker::new(),
        refusals: Arc::new(Semaphore::new(REFUSALS)),
    };
    listener.accept_loop(&stop).await;
    let deadline = deadline.await.unwrap_or_else(|_| Instant::now());
    listener.drain(deadline).await;
    background.cancel();
    tracing::info!("edge-svc stopped");
    Ok(())
}

/// Accepts client connections and tracks the tasks that serve them.
struct Listener {
    listener: TcpListener,
    ctx: Arc<Ctx>,
    tracker: TaskTracker,
    /// Permits to tell a refused connection why (see [`REFUSALS`]).
    refusals: Arc<Semaphore>,
}

impl Listener {
    /// Accepts connections until `shutdown`.
    async fn accept_loop(&self, shutdown: &CancellationToken) {
        let edge = &self.ctx.cfg.edge;
        let mut rate = AcceptRate::new(
            edge.accepts_per_addr_per_sec,
            edge.accept_burst,
            ACCEPT_RATE_ADDRS,
            Instant::now(),
        );
        // All addresses together: a storm from many hosts waits in the
        // kernel's backlog rather than taking every core for handshakes.
        let mut pace = Bucket::new(edge.accepts_per_sec, edge.accepts_per_sec, Instant::now());
        loop {
            if !pace.take(Instant::now()) {
                self.ctx.metrics.accepts_paced.inc();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pace.wait()) => continue,
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    // Over its address's rate: closed before any handshake.
                    Ok((_, peer)) if !rate.allow(peer.ip(), Instant::now()) => {
                        tracing::debug!(%peer, "over the accept rate; closed");
                        self.ctx.metrics.refused_rate.inc();
                    }
                    Ok((stream, peer)) => self.admit(stream, peer),
                    Err(e) => {
                        // Out of descriptors and the like: wait, never give up.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// Serves an accepted connection if the caps allow it; refuses it if not.
    fn admit(&self, stream: TcpStream, peer: SocketAddr) {
        let ctx = &self.ctx;
        let _ = stream.set_nodelay(true);
        let refusal = match ctx.slots.acquire(peer.ip()) {
            Ok(slot) => {
                self.tracker
                    .spawn(connection::serve(ctx.clone(), stream, peer, slot));
                return;
            }
            Err(refusal) => refusal,
        };
        tracing::info!(%peer, ?refusal, "connection refused");
        match refusal {
            Refusal::Full => ctx.metrics.refused_full.inc(),
            Refusal::Unauthenticated => ctx.metrics.refused_unauth.inc(),
        }
        // A few are told why; the rest are just closed.
        if let Ok(permit) = self.refusals.clone().try_acquire_owned() {
            let ctx = ctx.clone();
            self.tracker.spawn(async move {
                connection::refuse(ctx, stream, peer, refusal).await;
                drop(permit);
            });
        }
    }

    /// Stops listening, says `BYE server-shutdown` to every client and
    /// waits (until `deadline`, at least a second) for their connections to end.
    ///
    /// The `BYE` goes into each client's queue, after what is queued
    /// already (a drain's `REDIRECT`: closing out of band would drop it);
    /// connections still open halfway to the deadline are closed at once.
    async fn drain(self, deadline: Instant) {
        let Listener {
            listener,
            ctx,
            tracker,
            ..
        } = self;
        drop(listener);
        for id in ctx.hub.conn_ids() {
            ctx.hub.bye(id, "server-shutdown");
        }
        tracker.close();
        let half = deadline.saturating_duration_since(Instant::now()) / 2;
        if tokio::time::timeout(half, tracker.wait()).await.is_ok() {
            return;
        }
        for closer in ctx.hub.closers() {
            closer.close("server-shutdown");
        }
        if tokio::time::timeout(half, tracker.wait()).await.is_err() {
            tracing::warn!("connections still open after the drain deadline");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use e2e::{TestRedis, WAIT};
    use shared::admin::AdminPort;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[tokio::test]
    async fn a_busy_admin_port_is_reported_and_the_edge_serves_anyway() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = busy.local_addr().unwrap().to_string();
        // What the edge's bind says: that port, not bound (and logged).
        let report = shared::admin::bind(&addr).await;
        assert!(
            matches!(&report, AdminPort::Unbound { addr: a, .. } if *a == addr),
            "{report:?}"
        );

        let redis = TestRedis::start().await;
        let mut cfg = Config {
            redis_url: redis.url(),
            ..Config::default()
        };
        cfg.edge.id = "edge-busy-admin".into();
        cfg.edge.admin_listen = addr;
        let certs = shared::tls::DevCerts::generate(&["localhost"]).unwrap();
        let tls = shared::tls::server_config_pem(&certs.server_pem, &certs.server_key_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let sealer = shared::seal::Opener::generate().sealer();
        let edge = tokio::spawn(run(listener, cfg, tls, sealer, shutdown.clone()));

        // It serves: a TLS client is greeted.
        let trust = shared::tls::Trust::CaPem(certs.ca_pem.clone());
        let client = tokio_rustls::TlsConnector::from(shared::tls::client_config(&trust).unwrap());
        let tcp = TcpStream::connect(port).await.unwrap();
        let name = shared::tls::server_name("localhost").unwrap();
        let stream = tokio::time::timeout(WAIT, client.connect(name, tcp))
            .await
            .expect("TLS handshake in time")
            .unwrap();
        let mut lines = BufReader::new(stream).lines();
        let hello = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("greeted in time")
            .unwrap()
            .unwrap();
        assert!(hello.starts_with("HELLO edge-busy-admin "), "{hello}");

        shutdown.cancel();
        let ended = tokio::time::timeout(WAIT, edge)
            .await
            .expect("the edge stops")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
        drop(busy);
    }
}
