//! Partition leases: each router instance owns a fair share of the
//! partitions, renews its leases, takes free ones and gives back extras.

use redis::AsyncCommands;
use shared::config::Config;
use shared::keys::{partition_of, Keys};
use shared::scripts::Call;
use shared::store::Conn;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Until when every lease held is surely still ours, less a margin: the
/// start of the last maintenance that renewed them all, plus two thirds of
/// their time to live (Redis counts it from later; the last third is left
/// for a publish begun just before to reach Redis). Past it a router
/// publishes nothing (`shared::steps::Steps::publish`): on a Redis Cluster
/// the routers publish after the steps, and a stalled router's late lines
/// must not follow its successor's.
pub(crate) use shared::steps::Until;

pub(crate) struct Leases {
    keys: Keys,
    conn: Conn,
    id: String,
    partitions: u32,
    ttl_ms: u64,
    owned: BTreeSet<u32>,
    /// What a maintenance that failed dropped: their keys may still name
    /// this router, which then takes them back (not another process given
    /// the same id: it takes only free leases).
    dropped: BTreeSet<u32>,
    until: Until,
}

impl Leases {
    pub(crate) fn new(cfg: &Config, keys: Keys, conn: Conn) -> Leases {
        Leases {
            keys,
            conn,
            id: cfg.router.id.clone(),
            partitions: cfg.partitions,
            ttl_ms: cfg.router.lease_ms,
            owned: BTreeSet::new(),
            dropped: BTreeSet::new(),
            until: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// Until when the leases are surely held (see [`Until`]).
    pub(crate) fn until(&self) -> Until {
        self.until.clone()
    }

    fn hold_until(&self, t: Instant) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    pub(crate) fn owned(&self) -> impl Iterator<Item = u32> + '_ {
        self.owned.iter().copied()
    }

    /// Heartbeat, renewal, rebalancing.
    pub(crate) async fn maintain(&mut self) {
        if let Err(e) = self.try_maintain().await {
            // Unconfirmed leases may have run out: stop acting on them.
            // Pending requests stay for whoever owns the partitions next.
            tracing::warn!(error = %e, "lease maintenance failed; dropping leases");
            self.dropped.append(&mut self.owned);
            self.hold_until(Instant::now());
        }
    }

    /// A lease found lost while applying requests.
    pub(crate) fn forget(&mut self, p: u32) {
        if self.owned.remove(&p) {
            tracing::warn!(partition = p, "lease lost");
        }
    }

    async fn try_maintain(&mut self) -> redis::RedisResult<()> {
        let started = Instant::now();
        let now = shared::now_ms();
        let routers = self.keys.routers();
        let (_, _, live): ((), (), u32) = redis::pipe()
            .zadd(&routers, &self.id, now)
            .zrembyscore(&routers, "-inf", now.saturating_sub(3 * self.ttl_ms))
            .zcount(&routers, now.saturating_sub(self.ttl_ms), "+inf")
            .query_async(&mut self.conn)
            .await?;
        for p in self.owned.clone() {
            let kept: i64 = Call::new("chat_lease_renew", &[self.keys.router_lease(p)])
                .arg(&self.id)
                .arg(self.ttl_ms)
                .invoke(&mut self.conn)
                .await?;
            if kept == 0 {
                tracing::warn!(partition = p, "lease lost");
                self.owned.remove(&p);
            }
        }
        self.hold_until(started + Duration::from_millis(self.ttl_ms * 2 / 3));
        let fair = self.partitions.div_ceil(live.max(1)) as usize;
        while self.owned.len() > fair {
            let p = *self.owned.iter().next_back().expect("not empty");
            self.release_one(p).await?;
            tracing::info!(partition = p, "lease handed back for balance");
        }
        let mut taken = Vec::new();
        let start = partition_of(&self.id, self.partitions);
        for i in 0..self.partitions {
            if self.owned.len() >= fair {
                break;
            }
            let p = (start + i) % self.partitions;
            if self.owned.contains(&p) {
                continue;
            }
            let lease = self.keys.router_lease(p);
            let got = if self.dropped.contains(&p) {
                // Still ours, unless it ran out meanwhile.
                Call::new("chat_lease_take", &[lease])
                    .arg(&self.id)
                    .arg(self.ttl_ms)
                    .invoke::<i64>(&mut self.conn)
                    .await?
                    == 1
            } else {
                redis::cmd("SET")
                    .arg(lease)
                    .arg(&self.id)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.ttl_ms)
                    .query_async::<Option<String>>(&mut self.conn)
                    .await?
                    .is_some()
            };
            if got {
                self.owned.insert(p);
                taken.push(p);
            }
        }
        if !taken.is_empty() {
            tracing::info!(partitions = ?taken, owned = self.owned.len(), "leases taken");
        }
        self.dropped.clear();
        Ok(())
    }

    async fn release_one(&mut self, p: u32) -> redis::RedisResult<()> {
        self.owned.remove(&p);
        Call::new("chat_lease_release", &[self.keys.router_lease(p)])
            .arg(&self.id)
            .invoke::<i64>(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Gives every lease back (shutdown), so other routers take over at once.
    pub(crate) async fn release_all(&mut self) {
        for p in self.owned.clone() {
            if let Err(e) = self.release_one(p).await {
                tracing::warn!(partition = p, error = %e, "releasing a lease failed");
            }
        }
        let _: redis::RedisResult<()> = self.conn.zrem(self.keys.routers(), &self.id).await;
    }
}
