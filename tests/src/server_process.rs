//! A server of the test's own (nats-server, redis-server) on a free port, so a test can
//! really stop and restart it without touching anyone else's.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The running process, if any, of a server on `port`.
pub struct ServerProcess {
    pub port: u16,
    child: Option<Child>,
}

impl ServerProcess {
    pub fn new(port: u16) -> Self {
        Self { port, child: None }
    }

    /// Spawns `command` (quiet) and waits until the port accepts connections.
    pub async fn start(&mut self, mut command: Command) -> anyhow::Result<()> {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "the server accepts connections",
            || async move {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        Ok(())
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
