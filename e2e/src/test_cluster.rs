//! A Redis Cluster of a test's own: masters (and a replica of each, if asked) on free ports, made with `redis-cli --cluster create`.

use crate::{RedisOptions, TestRedis};
use std::time::Duration;

/// How long a node may be unreachable before the cluster fails it over
/// (`cluster-node-timeout`), in ms: short, so that a test's failover takes
/// a second or two.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A Redis Cluster; its servers are killed on drop.
pub struct TestCluster {
    /// Masters first, as created; then their replicas.
    pub nodes: Vec<TestRedis>,
}

impl TestCluster {
    /// `masters` masters sharing the 16384 slots, each with `replicas`
    /// replicas, all on 127.0.0.1; returns once every node sees the
    /// cluster as `ok`.
    pub async fn start(masters: usize, replicas: usize) -> TestCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            // The cluster bus's port is given: by default it is the port
            // plus 10000, out of range for a free port above 55535.
            let bus = crate::free_port().to_string();
            let timeout = NODE_TIMEOUT_MS.to_string();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
                "--cluster-port",
                &bus,
            ];
            let opts = RedisOptions {
                args: args.map(String::from).to_vec(),
                ..RedisOptions::default()
            };
            nodes.push(TestRedis::start_with(opts).await);
        }
        let create = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .kill_on_drop(true)
            .output();
        let created = tokio::time::timeout(crate::WAIT, create)
            .await
            .expect("redis-cli --cluster create finishes")
            .expect("redis-cli must be installed (make test installs it)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = TestCluster { nodes };
        for node in &cluster.nodes {
            crate::eventually("every node sees the cluster ok", || async {
                cluster_info(node).await.contains("cluster_state:ok")
            })
            .await;
        }
        for master in cluster.masters().await {
            crate::eventually("every replica is in sync", || async {
                let info = ask(master, &["INFO", "replication"]).await;
                info.contains(&format!("connected_slaves:{replicas}"))
                    && info.matches("state=online").count() == replicas
            })
            .await;
        }
        cluster
    }

    /// The seed URLs (every node's).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(TestRedis::url).collect()
    }

    /// The live nodes that are masters now (a promoted replica too).
    pub async fn masters(&self) -> Vec<&TestRedis> {
        let mut out = Vec::new();
        for node in &self.nodes {
            if ask(node, &["INFO", "replication"])
                .await
                .contains("role:master")
            {
                out.push(node);
            }
        }
        out
    }

    /// The live master (its index in `nodes`) that holds `key`'s slot now:
    /// the one node that serves it (the others answer `MOVED`).
    pub async fn master_of(&self, key: &str) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if !ask(node, &["EXISTS", key]).await.is_empty() {
                return Some(i);
            }
        }
        None
    }

    /// Kills node `i` (`SIGKILL`: no goodbye to the cluster).
    pub fn kill(&self, i: usize) {
        crate::signal(self.nodes[i].pid(), "KILL");
    }
}

/// `CLUSTER INFO` as one node sees it ('' if it does not answer).
pub async fn cluster_info(node: &TestRedis) -> String {
    ask(node, &["CLUSTER", "INFO"]).await
}

/// A command's text answer from `node` ('' if it does not answer within
/// a second).
async fn ask(node: &TestRedis, args: &[&str]) -> String {
    let asked = async {
        let client = redis::Client::open(node.url()).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        let answer: redis::Value = redis::cmd(args[0])
            .arg(&args[1..])
            .query_async(&mut c)
            .await
            .ok()?;
        match answer {
            redis::Value::Int(n) => Some(n.to_string()),
            other => redis::from_redis_value(other).ok(),
        }
    };
    tokio::time::timeout(Duration::from_secs(1), asked)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}
