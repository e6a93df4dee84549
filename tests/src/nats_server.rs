//! A nats-server of the test's own (JetStream on, its own port and store), so a test
//! can really stop and restart it without touching anyone else's.

use std::process::Command;

use crate::server_process::{ServerProcess, free_port};

pub struct NatsServer {
    pub port: u16,
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
            url: format!("nats://127.0.0.1:{port}"),
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
