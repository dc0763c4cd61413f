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

use redis::Client;
use shared::config::Config;
use shared::keys::Keys;
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

/// Routes requests until `shutdown`, then hands its partitions back.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), RouterError> {
    let client = Client::open(cfg.redis_url.as_str())?;
    let keys = Keys::new(cfg.key_prefix.clone());
    let mut cmds = shared::store::commands(&client).await?;
    let mut reader = shared::store::blocking(&client, BLOCK).await?;
    for p in 0..cfg.partitions {
        shared::store::ensure_group(&mut cmds, &keys.router_requests(p), GROUP).await?;
    }
    let mut leases = leases::Leases::new(&cfg, keys.clone(), cmds.clone());
    let mut worker = process::Worker::new(&cfg, keys.clone(), cmds, shutdown.clone());
    tracing::info!(id = %cfg.router.id, partitions = cfg.partitions, "router-svc ready");

    let renew_every = Duration::from_millis(cfg.router.lease_ms / 3);
    let mut next_renewal = tokio::time::Instant::now();
    while !shutdown.is_cancelled() {
        if tokio::time::Instant::now() >= next_renewal {
            for p in leases.maintain().await {
                worker.take_over(p).await;
            }
            next_renewal = tokio::time::Instant::now() + renew_every;
        }
        let streams: Vec<String> = leases.owned().map(|p| keys.router_requests(p)).collect();
        let wait = next_renewal.saturating_duration_since(tokio::time::Instant::now());
        if streams.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => continue,
            }
        }
        let block = wait.clamp(Duration::from_millis(1), BLOCK);
        let read = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = shared::store::read_group(&mut reader, &streams, GROUP, &cfg.router.id, cfg.router.batch, block) => r,
        };
        match read {
            Ok(entries) => {
                worker.handle(entries).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading requests failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    leases.release_all().await;
    tracing::info!("router-svc stopped");
    Ok(())
}
