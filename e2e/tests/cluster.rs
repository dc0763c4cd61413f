//! The Redis plumbing on a Redis Cluster of the test's own (3 masters): the functions library on every master, calls routed to the master of their keys' slot, and a master's failover followed.

use e2e::{cluster_info, eventually, TestCluster};
use shared::config::RedisConfig;
use shared::keys::Keys;
use shared::scripts::Call;
use shared::store::Conn;
use std::collections::HashSet;
use std::time::Instant;

/// A cluster of `masters` masters with `replicas` replicas each, and a
/// connection to it as the services make one.
async fn cluster(masters: usize, replicas: usize) -> (TestCluster, Conn) {
    let cluster = TestCluster::start(masters, replicas).await;
    let conn = shared::store::cluster(&cluster.seeds(), &RedisConfig::default())
        .await
        .unwrap();
    (cluster, conn)
}

/// Router `r1` holds `lease`.
async fn hold(conn: &mut Conn, lease: &str) {
    redis::cmd("SET")
        .arg(lease)
        .arg("r1")
        .query_async::<()>(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_library_is_on_every_master_and_each_call_runs_where_its_key_lives() {
    let (cluster, mut conn) = cluster(3, 0).await;
    for node in &cluster.nodes {
        let libraries: redis::Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .query_async(&mut node.plain().await)
            .await
            .unwrap();
        assert!(
            format!("{libraries:?}").contains("chat_lease_renew"),
            "the library on 127.0.0.1:{}",
            node.port
        );
    }
    // The 16 partitions' leases fall on every master; each renewal runs on
    // its key's master (a call sent elsewhere fails with MOVED).
    let keys = Keys::new("chat:");
    let mut masters = HashSet::new();
    for p in 0..16 {
        let lease = keys.router_lease(p);
        hold(&mut conn, &lease).await;
        let renewed: i64 = Call::new("chat_lease_renew", &[&lease])
            .arg("r1")
            .arg(5000)
            .invoke(&mut conn)
            .await
            .unwrap();
        assert_eq!(renewed, 1, "{lease}");
        let master = cluster.master_of(&lease).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&lease)
            .query_async(&mut cluster.nodes[master].plain().await)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 5000, "{lease} on its master: {ttl}");
        masters.insert(master);
    }
    assert_eq!(masters.len(), 3, "the leases spread over the masters");
}

#[tokio::test]
async fn a_killed_master_is_replaced_by_its_replica_and_the_connection_follows() {
    let (cluster, mut conn) = cluster(3, 1).await;
    let key = Keys::new("chat:").router_lease(0);
    hold(&mut conn, &key).await;
    // Replicated before the kill: `WAIT 1` on its master says so.
    let master = cluster.master_of(&key).await.unwrap();
    let node = &cluster.nodes[master];
    eventually("the write is on a replica", || async {
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(200);
        wait.query_async(&mut node.plain().await).await == Ok(1)
    })
    .await;
    cluster.kill(master);
    let killed = Instant::now();
    eventually("a renewal through the same connection succeeds", || {
        let (mut conn, key) = (conn.clone(), key.clone());
        async move {
            let call = Call::new("chat_lease_renew", &[&key]).arg("r1").arg(5000);
            call.invoke::<i64>(&mut conn).await.is_ok_and(|n| n == 1)
        }
    })
    .await;
    eprintln!("service resumed {:?} after the kill", killed.elapsed());
    let new_master = cluster.master_of(&key).await.unwrap();
    assert_ne!(new_master, master, "a replica took over");
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i != master {
            eventually("the live nodes see the cluster ok", || async {
                cluster_info(node).await.contains("cluster_state:ok")
            })
            .await;
        }
    }
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, "r1", "what was replicated before the kill");
}
