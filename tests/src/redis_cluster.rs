//! A three-master Redis Cluster of the test's own on loopback ports (no replicas, no
//! persistence, Keel's ACL users on every node), made with `redis-cli --cluster create`.

use std::process::Command;
use std::time::Duration;

use crate::eventually;
use crate::principals::{self, Principal, principals};
use crate::server_process::{ServerProcess, free_port};

/// How many masters the cluster has.
pub const MASTERS: usize = 3;

pub struct RedisCluster {
    nodes: Vec<ServerProcess>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the nodes, joins them into one cluster and waits until every node reports
    /// `cluster_state:ok`.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "keel-redis-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut nodes = Vec::with_capacity(MASTERS);
        for index in 0..MASTERS {
            let port = free_port()?;
            let mut process = ServerProcess::new(port);
            let mut command = Command::new("redis-server");
            command
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--cluster-enabled", "yes"])
                .arg("--cluster-config-file")
                .arg(dir.join(format!("nodes-{index}.conf")))
                .arg("--dir")
                .arg(&dir)
                .arg("--aclfile")
                .arg(principals().redis_acl_file());
            process.start(command).await?;
            nodes.push(process);
        }
        let cluster = Self { nodes, dir };
        let admin = reqwest::Url::parse(&principals().redis_url(Principal::Admin))?;
        let created = Command::new("redis-cli")
            .args(["--user", admin.username(), "--pass"])
            .arg(admin.password().unwrap_or_default())
            .arg("--no-auth-warning")
            .args(["--cluster", "create"])
            .args(cluster.addresses())
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()?;
        anyhow::ensure!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for address in cluster.addresses() {
            let url = principals::redis_as(&format!("redis://{address}"), Principal::Admin);
            eventually(
                Duration::from_secs(30),
                "every node reports cluster_state:ok",
                || {
                    let url = url.clone();
                    async move {
                        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
                        let mut connection = client
                            .get_multiplexed_async_connection()
                            .await
                            .map_err(|e| e.to_string())?;
                        let info: String = redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query_async(&mut connection)
                            .await
                            .map_err(|e| e.to_string())?;
                        if info.contains("cluster_state:ok") {
                            Ok(())
                        } else {
                            Err("cluster_state is not ok yet".to_owned())
                        }
                    }
                },
            )
            .await;
        }
        Ok(cluster)
    }

    fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect()
    }

    /// Every node's URL for `principal`, comma-separated (`REDIS_URL`'s form for a
    /// cluster).
    pub fn url_for(&self, principal: Principal) -> String {
        self.addresses()
            .iter()
            .map(|address| principals::redis_as(&format!("redis://{address}"), principal))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
