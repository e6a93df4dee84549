//! The real `command-api` binary as a child process, for tests that SIGKILL it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::eventually;
use crate::server_process::free_port;

pub struct ApiProcess {
    pub base_url: String,
    /// The internal listener: `/internal/*`, `/metrics`, health.
    pub internal_url: String,
    child: Child,
}

/// `target/debug/command-api` (built by `cargo build --workspace --bins`).
pub fn binary() -> std::path::PathBuf {
    binary_named("command-api")
}

/// `target/debug/<name>`, one of the workspace's binaries.
pub fn binary_named(name: &str) -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        std::path::PathBuf::from,
    );
    target.join("debug").join(name)
}

impl ApiProcess {
    /// Starts the binary with `env` (plus a free port for each listener) and waits until
    /// it answers.
    pub async fn spawn(env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::spawn_with_args(&[], env).await
    }

    /// The same, with command-line `args` (e.g. `--no-publisher`).
    pub async fn spawn_with_args(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let binary = binary();
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: run `cargo build --workspace --bins`",
            binary.display()
        );
        let (port, internal_port) = (free_port()?, free_port()?);
        let child = Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("KEEL_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("KEEL_INTERNAL_ADDR", format!("127.0.0.1:{internal_port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let base_url = format!("http://127.0.0.1:{port}");
        let internal_url = format!("http://127.0.0.1:{internal_port}");
        for url in [&base_url, &internal_url] {
            let health = format!("{url}/healthz");
            eventually(
                Duration::from_secs(30),
                "command-api answers /healthz",
                || {
                    let health = health.clone();
                    async move {
                        reqwest::get(&health)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                },
            )
            .await;
        }
        Ok(Self {
            base_url,
            internal_url,
            child,
        })
    }

    /// SIGKILL: no shutdown, no flush, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP / SIGCONT: freeze and thaw the process.
    pub fn signal(&self, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
    }

    /// One metric's value from `/metrics` (on the internal listener).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.internal_url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
