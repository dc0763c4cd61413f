//! The fault-injection suite, part 1: process faults under a steady load
//! (six users, 20 messages a second over two edges), checked by
//! `e2e::checker` (its file comment has the rules). Each test prints
//! `recovery <fault>: <ms> ms`; run with `--nocapture` to see it.
//!
//! The tests run one at a time (they measure times, and the machine is
//! small).

use e2e::checker::{Load, Options, Report};
use e2e::{Role, Shape, System, WAIT};
use redis::AsyncCommands;
use shared::config::Config;
use std::time::{Duration, Instant};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DEAD_AFTER_MS: u64 = 1500;
const LEASE_MS: u64 = 1500;
const GRACE_MS: u64 = 2000;

/// Short heartbeats, leases and grace, so faults show (and heal) quickly.
fn faulty(c: &mut Config) {
    c.edge.dead_after_ms = DEAD_AFTER_MS;
    // Must be below dead_after_ms.
    c.edge.request_timeout_ms = 1000;
    c.router.lease_ms = LEASE_MS;
    c.shutdown_grace_ms = GRACE_MS;
    c.router.history_cap = 10_000;
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn done(fault: &str, report: &Report, started: Instant) {
    report.print(fault);
    eprintln!(
        "  {fault}: test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The owner of each partition's lease.
/// One test at a time: two edges, two routers owning their partitions
/// and one auth-svc, under load for 3 s.
async fn two_routers_under_load() -> (tokio::sync::MutexGuard<'static, ()>, Instant, System, Load) {
    let one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let sys = System::start_with(Shape::new(2, 2, 1), faulty).await;
    sys.routers_own_partitions(2).await;
    let load = Load::start(&sys, Options::default()).await;
    load.run_for(secs(3)).await;
    (one, started, sys, load)
}

/// After a router fault: the load goes on for 2 s, router-0 comes back
/// and takes its share, 3 s more, then the checks (and the report line).
async fn router_back_and_done(sys: &mut System, load: Load, fault: &str, started: Instant) {
    load.recovered().await;
    load.run_for(secs(2)).await;
    sys.restart(Role::Router, 0).await;
    sys.routers_own_partitions(2).await;
    load.run_for(secs(3)).await;
    let report = load.finish(sys).await;
    done(fault, &report, started);
}

async fn lease_owners(sys: &System) -> Vec<Option<String>> {
    let mut r = sys.redis.conn().await;
    let keys = sys.keys();
    let mut owners = Vec::new();
    for p in 0..sys.cfg.partitions {
        owners.push(r.get(keys.router_lease(p)).await.unwrap());
    }
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_killed_then_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut sys = System::start_with(Shape::new(2, 1, 1), faulty).await;
    let opts = Options {
        churn: vec![5],
        ..Options::default()
    };
    let load = Load::start(&sys, opts).await;
    // Someone on edge-1 who does not come back: only the reaper ends
    // that session.
    sys.add_user("bystander").await;
    let _bystander = sys.login(0, "bystander").await;
    load.run_for(secs(3)).await;

    load.fault();
    sys.kill(Role::Edge, 0).await;
    let killed = Instant::now();
    sys.session_gone("bystander").await;
    let reaped = killed.elapsed();
    let r = sys.redis.conn().await;
    let set = sys.keys().edge_sessions("edge-1");
    e2e::eventually("edge-1 holds no session", || {
        let (mut r, set) = (r.clone(), set.clone());
        async move { r.scard::<_, usize>(set).await.unwrap() == 0 }
    })
    .await;
    let emptied = killed.elapsed();
    load.recovered().await;
    assert!(
        load.lost_sessions() >= 3,
        "edge-1's users lost their connections"
    );
    assert!(
        reaped < Duration::from_millis(DEAD_AFTER_MS) + secs(5),
        "the dead edge's session went after {reaped:?}"
    );
    load.run_for(secs(2)).await;

    sys.restart(Role::Edge, 0).await;
    // The churning user comes back to edge-1 meanwhile.
    load.run_for(secs(4)).await;
    let report = load.finish(&sys).await;
    done("edge kill -9", &report, started);
    eprintln!(
        "  edge kill -9: the bystander's session was reaped {} ms after the kill, \
         edge-1's session set empty after {} ms (edge.dead_after_ms {DEAD_AFTER_MS})",
        reaped.as_millis(),
        emptied.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_then_restarted() {
    let (_one, started, mut sys, load) = two_routers_under_load().await;

    load.fault();
    sys.kill(Role::Router, 0).await;
    let killed = Instant::now();
    let r = &sys;
    e2e::eventually("router-1 owns every partition", || async move {
        lease_owners(r)
            .await
            .iter()
            .all(|o| o.as_deref() == Some("router-1"))
    })
    .await;
    let taken = killed.elapsed();
    router_back_and_done(&mut sys, load, "router kill -9", started).await;
    eprintln!(
        "  router kill -9: router-1 owned every partition {} ms after the kill \
         (router.lease_ms {LEASE_MS})",
        taken.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_killed_during_logins_then_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut sys = System::start_with(Shape::new(2, 1, 2), faulty).await;
    // Three users of the load log in again every second or so.
    let opts = Options {
        churn: vec![3, 4, 5],
        churn_every: Duration::from_millis(1200),
        ..Options::default()
    };
    let load = Load::start(&sys, opts).await;
    let burst: Vec<String> = (0..6).map(|i| format!("burst{i}")).collect();
    for b in &burst {
        sys.add_user(b).await;
    }
    let mut clients = Vec::new();
    for (i, _) in burst.iter().enumerate() {
        clients.push(sys.connect(i % 2).await);
    }
    load.run_for(secs(3)).await;

    // A burst of logins, and auth-0 killed with some of them in hand.
    for (c, b) in clients.iter_mut().zip(&burst) {
        c.send(&format!("LOGIN {b} {}", e2e::password(b))).await;
    }
    load.fault();
    sys.kill(Role::Auth, 0).await;
    let killed = Instant::now();
    let mut retried = 0;
    let mut slowest = Duration::ZERO;
    for (c, b) in clients.iter_mut().zip(&burst) {
        loop {
            let reply = c.line().await;
            if reply == format!("OK LOGIN {b} lobby") {
                break;
            }
            assert!(reply.starts_with("ERR unavailable"), "{b}: {reply}");
            retried += 1;
            c.send(&format!("LOGIN {b} {}", e2e::password(b))).await;
        }
        slowest = slowest.max(killed.elapsed());
    }
    // Each burst login left exactly one session, on its connection's edge.
    let mut r = sys.redis.conn().await;
    for (i, b) in burst.iter().enumerate() {
        let edge: Option<String> = r.hget(sys.keys().session(b), "edge").await.unwrap();
        assert_eq!(edge, Some(Role::Edge.id(i % 2)), "{b}");
        let holds: bool = r
            .sismember(sys.keys().edge_sessions(&Role::Edge.id(i % 2)), b)
            .await
            .unwrap();
        assert!(holds, "{b} is in its edge's session set");
    }
    load.recovered().await;
    load.run_for(secs(2)).await;

    sys.restart(Role::Auth, 0).await;
    load.run_for(secs(3)).await;
    let report = load.finish(&sys).await;
    assert!(report.logins_ok > 6, "logins went on: {report:?}");
    done("auth kill -9", &report, started);
    eprintln!(
        "  auth kill -9: all 6 logins of the burst answered OK within {} ms \
         ({retried} retried after ERR unavailable; auth.claim_idle_ms {})",
        slowest.as_millis(),
        sys.cfg.auth.claim_idle_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_stopped_past_its_lease_then_continued() {
    let (_one, started, sys, load) = two_routers_under_load().await;

    let before = lease_owners(&sys).await;
    let owned: Vec<usize> = (0..before.len())
        .filter(|p| before[*p].as_deref() == Some("router-0"))
        .collect();
    assert!(!owned.is_empty(), "router-0 owns partitions: {before:?}");
    load.fault();
    sys.signal(Role::Router, 0, "STOP");
    let stopped = Instant::now();
    let r = &sys;
    let owned_ref = &owned;
    e2e::eventually("router-1 took router-0's partitions", || async move {
        let now = lease_owners(r).await;
        owned_ref
            .iter()
            .all(|p| now[*p].as_deref() == Some("router-1"))
    })
    .await;
    let taken = stopped.elapsed();
    load.recovered().await;
    // Well past its lease, with whatever it had read in hand.
    load.run_for(Duration::from_millis(2 * LEASE_MS)).await;
    sys.signal(Role::Router, 0, "CONT");
    let paused = stopped.elapsed();
    // It comes back as a router like any other.
    sys.routers_own_partitions(2).await;
    load.run_for(secs(3)).await;
    let report = load.finish(&sys).await;
    done("router SIGSTOP past its lease", &report, started);
    eprintln!(
        "  router SIGSTOP past its lease: stopped {} ms; router-1 owned its {} partitions \
         after {} ms (router.lease_ms {LEASE_MS})",
        paused.as_millis(),
        owned.len(),
        taken.as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_terminated_while_redis_is_unreachable_exits_in_its_grace() {
    let (_one, started, mut sys, load) = two_routers_under_load().await;

    let redis = sys.redis.pid();
    load.fault();
    e2e::signal(redis, "STOP");
    let stopped = Instant::now();
    sys.signal(Role::Router, 0, "TERM");
    let status = tokio::time::timeout(WAIT, sys.exited(Role::Router, 0)).await;
    let took = stopped.elapsed();
    // Redis stays away for twice edge.dead_after_ms: nobody can beat
    // meanwhile, and nobody may be taken for dead for it.
    let away = stopped + Duration::from_millis(2 * DEAD_AFTER_MS);
    tokio::time::sleep_until(away.into()).await;
    e2e::signal(redis, "CONT");
    let status = status.expect("router-0 exits");
    let bound = Duration::from_millis(GRACE_MS) + secs(3);
    assert!(
        took < bound,
        "router-0 took {took:?} to exit on SIGTERM without Redis (grace {GRACE_MS} ms)"
    );
    router_back_and_done(&mut sys, load, "redis SIGSTOP + router SIGTERM", started).await;
    eprintln!(
        "  redis SIGSTOP + router SIGTERM: router-0 exited ({status}) {} ms after SIGTERM \
         (shutdown_grace_ms {GRACE_MS})",
        took.as_millis()
    );
}
