//! A server of the test's own (nats-server, redis-server) on a free port, so a test can
//! really stop and restart it without touching anyone else's.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;

/// A port nobody listens on right now, and never handed out before in this process (two
/// tests starting servers at once must not both be given the same one).
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut given = GIVEN
            .lock()
            .map_err(|_| anyhow::anyhow!("the port registry is poisoned"))?;
        if given.insert(port) {
            return Ok(port);
        }
    }
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

    /// Spawns `command` (quiet) and waits until the port accepts connections, from this
    /// server: one that exited meanwhile (its port was taken) is an error.
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
        if let Some(status) = self
            .child
            .as_mut()
            .map(Child::try_wait)
            .transpose()?
            .flatten()
        {
            anyhow::bail!(
                "the server for port {port} exited at start ({status}): is the port taken?"
            );
        }
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
