//! A redis-server of the test's own (its own port, no persistence, Keel's ACL users), so
//! a test can really stop and restart it without touching anyone else's.

use std::process::Command;

use crate::principals::{self, Principal, principals};
use crate::server_process::{ServerProcess, free_port};

pub struct RedisServer {
    pub port: u16,
    /// The admin's URL; [`RedisServer::url_for`] gives a process's.
    pub url: String,
    process: ServerProcess,
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut server = Self {
            port,
            url: principals::redis_as(&format!("redis://127.0.0.1:{port}"), Principal::Admin),
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
            .arg(std::env::temp_dir())
            .arg("--aclfile")
            .arg(principals().redis_acl_file());
        self.process.start(command).await
    }

    /// `principal`'s URL of this server.
    pub fn url_for(&self, principal: Principal) -> String {
        principals::redis_as(&self.url, principal)
    }

    /// Kills the server process (SIGKILL) and waits for it to be gone.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}
