//! A redis-server of the test's own (its own port, no persistence), so a test can really
//! stop and restart it without touching anyone else's.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

pub struct RedisServer {
    pub port: u16,
    pub url: String,
    child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut server = Self {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            child: None,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Starts the server (again) on the same port, empty.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "redis-server accepts connections",
            || async move {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        Ok(())
    }

    /// Kills the server process (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
