//! A nats-server of the test's own (JetStream on, its own port and store), so a test
//! can really stop and restart it without touching anyone else's.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

pub struct NatsServer {
    pub port: u16,
    pub url: String,
    store: std::path::PathBuf,
    child: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
            child: None,
        };
        server.start_again().await?;
        Ok(server)
    }

    /// Starts the server (again) on the same port and store.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "nats-server accepts connections",
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
