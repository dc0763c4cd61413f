//! [`Ctx`]: what every connection of this edge shares, and its requests to Redis.

use crate::hub::{Hub, Session};
use crate::limits;
use crate::metrics::Metrics;
use redis::aio::ConnectionManager;
use shared::config::Config;
use shared::envelope::{Op, Request};
use shared::keys::{partition_of, Keys};
use shared::seal::Sealer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// What every connection of this edge shares.
pub(crate) struct Ctx {
    pub(crate) cfg: Config,
    pub(crate) keys: Keys,
    pub(crate) hub: Arc<Hub>,
    pub(crate) redis: ConnectionManager,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) slots: Arc<limits::Slots>,
    pub(crate) metrics: Metrics,
    /// Seals passwords to auth-svc's public key.
    pub(crate) sealer: Sealer,
    next_conn: AtomicU64,
    next_rid: AtomicU64,
}

impl Ctx {
    pub(crate) fn new(
        cfg: Config,
        keys: Keys,
        hub: Arc<Hub>,
        redis: ConnectionManager,
        tls: Arc<rustls::ServerConfig>,
        sealer: Sealer,
    ) -> Ctx {
        Ctx {
            keys,
            hub,
            redis,
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

    /// Adds `reqs` to `stream`, in order, in one round trip.
    pub(crate) async fn send_requests(
        &self,
        stream: &str,
        reqs: &[Request],
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for req in reqs {
            shared::consumer::add_request(&mut pipe, stream, self.cfg.request_stream_maxlen, req);
        }
        pipe.query_async(&mut self.redis.clone()).await
    }

    /// Renews this edge's heartbeat (see [`shared::store::heartbeat`]).
    pub(crate) async fn beat(&self, restart: bool) -> redis::RedisResult<u64> {
        let (id, dead_after) = (&self.cfg.edge.id, self.cfg.edge.dead_after_ms);
        let restart = restart.then_some(self.cfg.notices);
        shared::store::heartbeat(&mut self.redis.clone(), &self.keys, id, dead_after, restart).await
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
