//! A three-node JetStream cluster of the test's own on loopback ports (Keel's users and
//! permissions on every node), so a test can SIGKILL the node that leads a stream and
//! start it again on the same ports and store.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;

use crate::eventually;
use crate::principals::{self, Principal, principals};
use crate::server_process::{ServerProcess, free_port};

/// How many nodes the cluster has.
pub const NODES: usize = 3;

struct Node {
    name: String,
    config: std::path::PathBuf,
    process: ServerProcess,
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: std::path::PathBuf,
}

impl NatsCluster {
    /// Starts the nodes and waits until the cluster has a JetStream meta leader.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "keel-nats-cluster-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir)?;
        let users = std::fs::read_to_string(principals().nats_conf())?;
        let ports: Vec<(u16, u16)> = (0..NODES)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let cluster_name = format!(
            "keel-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut nodes = Vec::with_capacity(NODES);
        for (index, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{}", index + 1);
            let store = dir.join(&name);
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n{users}\n\
                     jetstream {{store_dir: \"{}\"}}\n\
                     cluster {{name: {cluster_name}, listen: \"127.0.0.1:{route}\", routes: [{}]}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )?;
            nodes.push(Node {
                name,
                config,
                process: ServerProcess::new(*port),
            });
        }
        let mut cluster = Self { nodes, dir };
        for index in 0..NODES {
            cluster.start_node(index).await?;
        }
        let admin = cluster.url_for(Principal::Admin);
        eventually(
            Duration::from_secs(30),
            "the JetStream cluster elects a meta leader",
            || {
                let admin = admin.clone();
                async move {
                    let client = principals::nats_connect(&admin)
                        .await
                        .map_err(|e| e.to_string())?;
                    // A replicated stream can be made once the cluster has a meta leader.
                    let context = jetstream::new(client);
                    let probe = format!("PROBE_{}", uuid::Uuid::new_v4().simple());
                    context
                        .create_stream(jetstream::stream::Config {
                            name: probe.clone(),
                            subjects: vec![format!("probe.{probe}")],
                            num_replicas: NODES,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                    context
                        .delete_stream(&probe)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await;
        Ok(cluster)
    }

    /// Starts node `index` (again) on its ports and store.
    pub async fn start_node(&mut self, index: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[index];
        let mut command = Command::new("nats-server");
        command.arg("-c").arg(&node.config);
        node.process.start(command).await
    }

    /// SIGKILLs node `index` and waits for it to be gone.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].process.stop();
    }

    /// Every node's address for `principal`, comma-separated (`NATS_URL`'s form).
    pub fn url_for(&self, principal: Principal) -> String {
        self.nodes
            .iter()
            .map(|node| {
                principals::nats_as(
                    &format!("nats://127.0.0.1:{}", node.process.port),
                    principal,
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the node that leads `stream` now.
    pub async fn stream_leader(&self, stream: &str) -> anyhow::Result<usize> {
        let client = principals::nats_connect(&self.url_for(Principal::Admin)).await?;
        let mut handle = jetstream::new(client).get_stream(stream).await?;
        let info = handle.info().await?;
        let leader = info
            .cluster
            .as_ref()
            .and_then(|cluster| cluster.leader.clone())
            .ok_or_else(|| anyhow::anyhow!("stream {stream} has no leader"))?;
        self.nodes
            .iter()
            .position(|node| node.name == leader)
            .ok_or_else(|| anyhow::anyhow!("unknown leader {leader}"))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
