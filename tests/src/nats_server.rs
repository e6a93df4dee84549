//! A nats-server of the test's own (JetStream on, its own port and store, Keel's users and
//! permissions), so a test can really stop and restart it without touching anyone else's.

use std::process::Command;

use crate::principals::{self, Principal, principals};
use crate::server_process::{ServerProcess, free_port};

pub struct NatsServer {
    pub port: u16,
    /// The admin's URL; [`NatsServer::url_for`] gives a process's.
    pub url: String,
    store: std::path::PathBuf,
    process: ServerProcess,
}

impl NatsServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let store =
            std::env::temp_dir().join(format!("keel-nats-{}", uuid::Uuid::new_v4().simple()));
        let mut server = Self {
            port,
            url: principals::nats_as(&format!("nats://127.0.0.1:{port}"), Principal::Admin),
            store,
            process: ServerProcess::new(port),
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Starts the server (again) on the same port and store.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("nats-server");
        command
            .arg("-c")
            .arg(principals().nats_conf())
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store);
        self.process.start(command).await
    }

    /// `principal`'s URL of this server.
    pub fn url_for(&self, principal: Principal) -> String {
        principals::nats_as(&self.url, principal)
    }

    /// Kills the server process (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
