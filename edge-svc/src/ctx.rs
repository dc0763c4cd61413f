//! [`Ctx`]: what every connection of this edge shares, and its requests to Redis.

use crate::hub::{Hub, Session};
use crate::limits;
use crate::metrics::Metrics;
use shared::config::Config;
use shared::envelope::{Op, Request};
use shared::keys::{partition_of, Keys};
use shared::placement::EdgeLoad;
use shared::seal::Sealer;
use shared::store::Advert;
use shared::store::Conn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The longest a new connection waits to learn the other
/// edges (a Redis that does not answer must not hold new clients up).
pub(crate) const EDGES_READ_LIMIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a read of the other edges serves the placement of new
/// connections: a storm of connections costs Redis one read per period,
/// not one each (this edge's own count is always the live one).
const EDGES_CACHED_FOR: std::time::Duration = std::time::Duration::from_millis(250);

/// What every connection of this edge shares.
pub(crate) struct Ctx {
    pub(crate) cfg: Config,
    pub(crate) keys: Keys,
    /// On a Redis Cluster: sessions this edge left end in steps.
    steps: Option<shared::steps::Steps>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) redis: Conn,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) slots: Arc<limits::Slots>,
    pub(crate) metrics: Metrics,
    /// The `host:port` clients should use (`edge.public_addr`).
    pub(crate) public_addr: String,
    /// Cancelled when the edge starts draining (SIGTERM, `POST /drain`).
    pub(crate) drain: CancellationToken,
    /// Cancelled once the drain has asked every client to move.
    pub(crate) drained: CancellationToken,
    /// Seals passwords to auth-svc's public key.
    pub(crate) sealer: Sealer,
    /// The last read of the open edges, for placing new connections.
    placement: std::sync::Mutex<Option<(std::time::Instant, Arc<Vec<EdgeLoad>>)>>,
    next_conn: AtomicU64,
    next_rid: AtomicU64,
}

impl Ctx {
    pub(crate) fn new(
        cfg: Config,
        redis: &shared::store::Redis,
        hub: Arc<Hub>,
        tls: Arc<rustls::ServerConfig>,
        public_addr: String,
        sealer: Sealer,
    ) -> Ctx {
        Ctx {
            public_addr,
            drain: CancellationToken::new(),
            drained: CancellationToken::new(),
            placement: std::sync::Mutex::new(None),
            keys: redis.keys.clone(),
            steps: redis.steps(cfg.notices),
            hub,
            redis: redis.conn.clone(),
            acceptor: TlsAcceptor::from(tls),
            slots: limits::Slots::new(
                cfg.edge.max_connections,
                cfg.edge.max_connections_per_addr,
                cfg.edge.max_unauth_per_addr,
            ),
            metrics: Metrics::default(),
            sealer,
            next_conn: AtomicU64::new(shared::now_ms() * 1000),
            next_rid: AtomicU64::new(1),
            cfg,
        }
    }

    /// Connection ids start from the clock, so that an edge that restarts
    /// under the same id never reuses one that Redis may still name.
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn next_rid(&self) -> u64 {
        self.next_rid.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn router_stream(&self, user: &str) -> String {
        self.keys
            .router_requests(partition_of(user, self.cfg.partitions))
    }

    /// Adds `reqs` to `stream`, in order, all or none, in one round trip.
    pub(crate) async fn send_requests(
        &self,
        stream: &str,
        reqs: &[Request],
    ) -> redis::RedisResult<()> {
        shared::consumer::enqueue(stream, self.cfg.request_stream_maxlen, reqs)
            .invoke::<i64>(&mut self.redis.clone())
            .await
            .map(drop)
    }

    /// Renews this edge's heartbeat and advert (see
    /// [`shared::store::heartbeat`]).
    pub(crate) async fn beat(&self, restart: bool) -> redis::RedisResult<u64> {
        let (id, dead_after) = (&self.cfg.edge.id, self.cfg.edge.dead_after_ms);
        let restart = restart.then_some(self.cfg.notices);
        let advert = Advert {
            addr: self.public_addr.clone(),
            conns: self.metrics.connections.get().max(0) as u64,
            draining: self.drain.is_cancelled(),
        };
        let mut redis = self.redis.clone();
        let steps = self.steps.as_ref();
        shared::store::heartbeat(
            &mut redis, &self.keys, id, dead_after, &advert, restart, steps,
        )
        .await
    }

    /// Counts a connection opened (1) or closed (-1) in Redis, in the
    /// background: a slow Redis holds no connection up (and a lost count
    /// is made good by the next heartbeat).
    pub(crate) fn count_connection(&self, delta: i64) {
        let (mut redis, keys, id) = (
            self.redis.clone(),
            self.keys.clone(),
            self.cfg.edge.id.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = shared::store::count_connection(&mut redis, &keys, &id, delta).await {
                tracing::debug!(error = %e, "counting a connection failed");
            }
        });
    }

    /// The live edges that take new clients, with their loads (`/edges`).
    pub(crate) async fn open_edges(&self) -> redis::RedisResult<Vec<EdgeLoad>> {
        let live = shared::store::live_edges(&mut self.redis.clone(), &self.keys).await?;
        Ok(live
            .into_iter()
            .filter(|e| !e.draining)
            .map(|e| EdgeLoad {
                addr: e.addr,
                conns: e.conns,
            })
            .collect())
    }

    /// Where a new connection should go instead of this edge, if anywhere:
    /// anywhere else while draining, elsewhere when this edge is well
    /// above the mean load (`edge.redirect_*`). No answer from Redis in
    /// time: nowhere (served here).
    pub(crate) async fn redirect(&self) -> Option<String> {
        let edge = &self.cfg.edge;
        let draining = self.drain.is_cancelled();
        if !draining && edge.redirect_above_pct == 0 && edge.redirect_min_excess == 0 {
            return None;
        }
        let edges = self.placement_edges(draining).await?;
        let own = self.public_addr.as_str();
        if draining {
            return shared::placement::least_loaded(&edges, Some(own)).map(|e| e.addr.clone());
        }
        let conns = self.metrics.connections.get().max(0) as u64;
        let (pct, excess) = (edge.redirect_above_pct, edge.redirect_min_excess);
        shared::placement::redirect(&edges, own, conns, pct, excess)
    }

    /// The open edges for placing a new connection: a read at most
    /// [`EDGES_CACHED_FOR`] old (`fresh`: a new one). No answer from
    /// Redis in time: `None`.
    async fn placement_edges(&self, fresh: bool) -> Option<Arc<Vec<EdgeLoad>>> {
        let cached = self.placement.lock().expect("placement cache").clone();
        if let Some((at, edges)) = cached.filter(|_| !fresh) {
            if at.elapsed() < EDGES_CACHED_FOR {
                return Some(edges);
            }
        }
        let limit = EDGES_READ_LIMIT.min(self.cfg.edge.request_timeout());
        let read = tokio::time::timeout(limit, self.open_edges()).await;
        let edges = Arc::new(read.ok()?.ok()?);
        *self.placement.lock().expect("placement cache") =
            Some((std::time::Instant::now(), edges.clone()));
        Some(edges)
    }

    /// Asks the router to end `session` (if it is still the current one).
    pub(crate) async fn end_session(&self, session: Session) {
        let req = Request {
            edge: self.cfg.edge.id.clone(),
            conn: 0,
            rid: 0,
            user: session.user.clone(),
            sid: session.sid,
            op: Op::Logout,
        };
        if let Err(e) = self
            .send_requests(&self.router_stream(&session.user), &[req])
            .await
        {
            tracing::warn!(user = %session.user, error = %e, "ending a session failed");
        }
    }
}
