//! router-svc: routes chat traffic.
//!
//! Edges put each user's requests on one of `partitions` streams, chosen by
//! the user's name. Router instances divide the partitions among themselves
//! with leases (`<prefix>router:lease:<p>`), so each partition has one owner
//! that handles its requests in order: one publisher's messages keep their
//! order however many routers run. Every request is applied by one Lua
//! script that first checks the lease (a router that lost it cannot act)
//! and the partition's last applied entry id (a request handled twice,
//! after a takeover, takes effect once). docs/design.md explains why.
#![forbid(unsafe_code)]

mod leases;
mod process;
mod steps;

pub use process::{request_call, Place, RouterCall};

use process::{Outcome, Worker};
use shared::consumer::Entry;
use tokio::time::Instant;

use shared::admin::{Counter, Gauge, Histogram, Page, Probe};
use shared::config::Config;
use shared::keys::Keys;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The consumer group of router-svc on every partition stream.
pub const GROUP: &str = "router";

/// Longest a stream read waits for new requests.
const BLOCK: Duration = Duration::from_millis(1000);

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// What /metrics shows.
struct Metrics {
    conn: shared::store::Conn,
    streams: Vec<String>,
    /// Requests read and handed to the script (with retries and duplicates).
    requests: Counter,
    /// One read batch, from read to acknowledged.
    batch_seconds: Histogram,
    owned: Gauge,
}

impl Probe for Metrics {
    async fn healthy(&self) -> bool {
        shared::admin::redis_answers(&self.conn).await
    }

    async fn metrics(&self) -> String {
        // Handled requests are deleted: a stream's length is its backlog.
        let mut pipe = redis::pipe();
        for s in &self.streams {
            pipe.cmd("XLEN").arg(s);
        }
        let lengths: Vec<i64> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .unwrap_or_default();
        Page::default()
            .counter(
                "chat_router_requests_total",
                "Requests applied (retries included).",
                self.requests.get(),
            )
            .histogram(
                "chat_router_batch_seconds",
                "Time to apply one read batch.",
                &self.batch_seconds,
            )
            .gauge(
                "chat_router_partitions_owned",
                "Partitions this instance owns.",
                self.owned.get(),
            )
            .gauge(
                "chat_router_backlog",
                "Requests waiting or in hand, all partitions.",
                lengths.iter().sum(),
            )
            .finish()
    }
}

/// Routes requests until `shutdown`, then hands its partitions back.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), RouterError> {
    let redis = shared::store::Redis::connect(&cfg).await?;
    let keys = redis.keys.clone();
    let cmds = redis.conn.clone();
    let streams: Vec<String> = (0..cfg.partitions)
        .map(|p| keys.router_requests(p))
        .collect();
    let consumer = redis
        .consumer(streams.clone(), GROUP, &cfg.router.id, BLOCK)
        .await?;
    let mut leases = leases::Leases::new(&cfg, keys.clone(), cmds.clone());
    let mut worker = Worker::new(&cfg, &redis, consumer.clone(), leases.until());
    let metrics = Arc::new(Metrics {
        conn: cmds.clone(),
        streams: streams.clone(),
        requests: Counter::default(),
        batch_seconds: Histogram::default(),
        owned: Gauge::default(),
    });
    // A busy admin port is logged, not fatal.
    if let Some(admin) = shared::admin::bind(&cfg.router.admin_listen)
        .await
        .listener()
    {
        tokio::spawn(shared::admin::serve(
            admin,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    tracing::info!(id = %cfg.router.id, partitions = cfg.partitions, "router-svc ready");

    let renew_every = Duration::from_millis(cfg.router.lease_ms / 3);
    let dead_after = Duration::from_millis(cfg.edge.dead_after_ms);
    let mut redis_back_since = Instant::now()
        .checked_sub(dead_after)
        .unwrap_or_else(Instant::now);
    let mut next_renewal = Instant::now();
    // The batch in hand may finish after SIGTERM, within half the grace
    // period, and the leases are handed back within the other half: a
    // Redis that does not answer cannot hold the service past its deadline.
    let routing = async {
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_renewal {
                leases.maintain().await;
                // Sessions of edges that stopped beating (killed) end here; not
                // right after Redis was away, when nobody could beat.
                if redis_back_since.elapsed() >= dead_after {
                    match worker.reap_dead_edges().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(sessions = n, "ended the sessions of dead edges"),
                        Err(e) => {
                            tracing::warn!(error = %e, "looking for dead edges failed");
                            redis_back_since = Instant::now();
                        }
                    }
                }
                // Between batches nothing is in flight: whatever is pending on
                // an owned partition is left over (a previous owner's, or ours
                // that failed) and goes first.
                let owned: Vec<u32> = leases.owned().collect();
                metrics.owned.set(owned.len() as i64);
                if let Ok(counts) = worker.pending(&owned).await {
                    for (p, n) in owned.into_iter().zip(counts) {
                        if n > 0 {
                            let outcome = worker.recover(p).await;
                            settle(&mut leases, p, outcome);
                        }
                    }
                }
                next_renewal = Instant::now() + renew_every;
            }
            let owned: Vec<u32> = leases.owned().collect();
            let wait = next_renewal.saturating_duration_since(Instant::now());
            if owned.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            let streams: Vec<String> = owned.iter().map(|p| keys.router_requests(*p)).collect();
            let block = wait.clamp(Duration::from_millis(1), BLOCK);
            let read = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = consumer.read(&streams, cfg.router.batch, block) => r,
            };
            let Ok(entries) = read else {
                redis_back_since = Instant::now();
                continue;
            };
            let batches = by_partition(&keys, entries);
            let Ok((pending, places)) = worker.survey(&batches).await else {
                continue; // left pending; recovered in order at the next tick
            };
            let mut retry = false;
            let started = Instant::now();
            let mut runs = Vec::new();
            for ((p, batch), n) in batches.into_iter().zip(pending) {
                metrics.requests.add(batch.len() as u64);
                // Anything pending besides this batch is older than it.
                if n > batch.len() as u64 {
                    let outcome = worker.recover(p).await;
                    retry |= outcome == Outcome::Retry;
                    settle(&mut leases, p, outcome);
                } else {
                    runs.push((p, batch));
                }
            }
            for (p, outcome) in worker.apply_runs(runs, places).await {
                retry |= outcome == Outcome::Retry;
                settle(&mut leases, p, outcome);
            }
            metrics.batch_seconds.observe(started.elapsed());
            if retry {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let grace = cfg.shutdown_grace();
    tokio::select! {
        _ = routing => {}
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace / 2).await } => {
            tracing::warn!("the batch in hand did not finish by the shutdown deadline");
        }
    }
    if tokio::time::timeout(grace / 2, leases.release_all())
        .await
        .is_err()
    {
        tracing::warn!("leases not handed back by the shutdown deadline; they will expire");
    }
    tracing::info!("router-svc stopped");
    Ok(())
}

fn settle(leases: &mut leases::Leases, p: u32, outcome: Outcome) {
    match outcome {
        Outcome::Done => {}
        Outcome::Fenced => leases.forget(p),
        Outcome::Retry => tracing::warn!(partition = p, "requests left for a retry"),
    }
}

/// Splits a read into runs per partition, keeping stream order.
fn by_partition(keys: &Keys, entries: Vec<Entry>) -> Vec<(u32, Vec<Entry>)> {
    let mut out: Vec<(u32, Vec<Entry>)> = Vec::new();
    for entry in entries {
        let Some(p) = keys.partition_of_stream(&entry.stream) else {
            tracing::warn!(stream = %entry.stream, "entry from an unexpected stream ignored");
            continue;
        };
        match out.iter_mut().find(|(q, _)| *q == p) {
            Some((_, run)) => run.push(entry),
            None => out.push((p, vec![entry])),
        }
    }
    out
}
