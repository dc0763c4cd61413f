//! The failover scenario: the clients of an edge killed with SIGKILL log in again on the other edge, with their resume tokens or with their passwords (bcrypt at the configured cost).

use crate::load::{self, Error, Reader, Writer, PASSWORD};
use crate::system::{System, LOAD_USER_COST};
use e2e::Role;
use serde::Serialize;
use shared::line::ServerLine;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client gives up this long after the kill.
const GIVE_UP: Duration = Duration::from_secs(300);
/// A failed attempt waits before the next as the `chat` client does
/// (docs/client.md): 0.5 s, doubled after each failure up to 10 s, less a
/// random part of up to half.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Logins at once while setting up.
const SETUP_PARALLEL: usize = 64;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Failover {
    /// Clients logged in on the edge that is killed.
    pub clients: usize,
    pub bcrypt_cost: u32,
    /// Clients still out this long after the kill gave up.
    pub gave_up_after_s: u64,
    pub resume: Recovery,
    pub password: Recovery,
}

/// From the kill to each client's `OK LOGIN` on the other edge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    pub logged_in: usize,
    pub p50_s: Option<f64>,
    pub p99_s: Option<f64>,
    pub max_s: Option<f64>,
    /// Attempts that failed (`ERR unavailable`: the back end could not
    /// answer in time) and were made again.
    pub retries: u64,
}

/// On a system of its own (two edges): `clients` clients log in on edge 1
/// and it is killed; they all log in again on edge 2 at once, first with
/// `RESUME`, then (other users, edge 1 restarted) with their passwords.
pub async fn failover(bin: &Path, dir: &Path, clients: usize) -> Result<Failover, Error> {
    let mut system = System::start(bin, dir, 2).await?;
    let cost = system.services.cfg.auth.bcrypt_cost;
    let resume = recover(&mut system, "resume-", clients, cost, true).await?;
    system.services.restart(Role::Edge, 0).await;
    let password = recover(&mut system, "password-", clients, cost, false).await?;
    Ok(Failover {
        clients,
        bcrypt_cost: cost,
        gave_up_after_s: GIVE_UP.as_secs(),
        resume,
        password,
    })
}

/// One run: `n` users of `prefix` on edge 1 (index 0), which is killed;
/// how long until they are back on edge 2.
async fn recover(
    system: &mut System,
    prefix: &str,
    n: usize,
    cost: u32,
    resume: bool,
) -> Result<Recovery, Error> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let users = system.users(prefix, n, LOAD_USER_COST).await?;
    let target = system.target.clone();
    let conns: Vec<(Reader, Writer, String)> = stream::iter(users.iter())
        .map(|user| {
            let target = target.clone();
            async move {
                let (mut rd, wr) = load::login(&target, 0, user).await?;
                let ServerLine::Token { token, .. } =
                    rd.until(|l| matches!(l, ServerLine::Token { .. })).await?
                else {
                    unreachable!("until returns the line it waited for")
                };
                Ok::<_, Error>((rd, wr, token))
            }
        })
        .buffered(SETUP_PARALLEL)
        .try_collect()
        .await?;
    // Logging in again with the password costs what it costs for real.
    system.set_passwords(&users, cost).await?;
    let label = if resume { "RESUME" } else { "password" };
    eprintln!("  failover: {n} clients on edge 1; kill -9, then back with {label}");
    system.services.kill(Role::Edge, 0).await;
    let killed = Instant::now();
    let tokens: Vec<String> = conns.into_iter().map(|(_, _, token)| token).collect();
    let retries = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = users
        .iter()
        .zip(tokens)
        .map(|(user, token)| {
            let (target, user, retries) = (target.clone(), user.clone(), retries.clone());
            let mut token = resume.then_some(token);
            tokio::spawn(async move {
                let mut delay = RETRY_MIN;
                loop {
                    let line = match &token {
                        Some(t) => format!("RESUME {user} {t}\n"),
                        None => format!("LOGIN {user} {PASSWORD}\n"),
                    };
                    match again(&target, &line).await {
                        Ok(()) => return Some(killed.elapsed()),
                        Err(e) if e.to_string().starts_with("ERR bad-credentials") => token = None,
                        Err(_) => {}
                    }
                    retries.fetch_add(1, Ordering::Relaxed);
                    if killed.elapsed() > GIVE_UP {
                        return None;
                    }
                    let random = RandomState::new().hash_one(&user) % 1000;
                    tokio::time::sleep(delay.mul_f64(1.0 - random as f64 / 2000.0)).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(n);
    for t in tasks {
        if let Some(took) = t.await? {
            times.push(took.as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    // The time by which `share` of all clients were back, if they were.
    let by = |share: f64| {
        let k = ((n as f64 * share).ceil() as usize).max(1);
        times.get(k - 1).map(|s| (s * 100.0).round() / 100.0)
    };
    Ok(Recovery {
        logged_in: times.len(),
        p50_s: by(0.5),
        p99_s: by(0.99),
        max_s: by(1.0),
        retries: retries.load(Ordering::Relaxed),
    })
}

/// One login on edge 2 (`line`: `LOGIN` or `RESUME`), up to its `OK LOGIN`.
async fn again(target: &load::Target, line: &str) -> Result<(), Error> {
    let (mut rd, mut wr) = load::connect_from(target, 1, None).await?;
    wr.send(line.as_bytes()).await?;
    rd.until(|l| matches!(l, ServerLine::OkLogin { .. }))
        .await?;
    Ok(())
}
