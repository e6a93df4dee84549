//! A redis-server of the test's own (its own port, no persistence), so a test can really
//! stop and restart it without touching anyone else's.

use std::process::Command;

use crate::server_process::{ServerProcess, free_port};

pub struct RedisServer {
    pub port: u16,
    pub url: String,
    process: ServerProcess,
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut server = Self {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            process: ServerProcess::new(port),
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Starts the server (again) on the same port, empty.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir());
        self.process.start(command).await
    }

    /// Kills the server process (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}
