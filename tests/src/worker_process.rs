//! A worker binary (`projectors`, `relay`) as a child process on the test app's database,
//! stream, subjects and Redis, as its own principal, or any binary without listeners
//! (`command-api publisher`) with the given arguments and environment; for tests that
//! SIGKILL it.

use std::process::{Child, Command, Stdio};

use crate::TestApp;
use crate::principals::Principal;

pub struct WorkerProcess {
    child: Child,
}

impl WorkerProcess {
    /// Starts `target/debug/<binary>` (built by `cargo build --workspace --bins`).
    pub fn spawn(binary: &str, app: &TestApp) -> Self {
        Self::spawn_on(binary, app, &app.database_url)
    }

    /// The same, connected to Postgres through `database_url` (e.g. as another role).
    pub fn spawn_on(binary: &str, app: &TestApp, database_url: &str) -> Self {
        let principal = match binary {
            "relay" => Principal::Relay,
            _ => Principal::Projectors,
        };
        let env = [
            ("DATABASE_URL", database_url.to_owned()),
            ("NATS_URL", app.nats_url_of(principal)),
            ("REDIS_URL", app.redis_url_of(principal)),
            ("KEEL_STREAM", app.stream.clone()),
            ("KEEL_SUBJECT_PREFIX", app.subject_prefix.clone()),
            ("KEEL_PARTITIONS", app.partitions.to_string()),
        ];
        Self::spawn_command(binary, &[], &env)
    }

    /// `target/debug/<binary> <args>` with `env`, e.g. `command-api publisher`: a process
    /// without listeners, so nothing is awaited.
    pub fn spawn_command(binary: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let path = crate::api_process::binary_named(binary);
        assert!(
            path.exists(),
            "{} is missing: run `cargo build --workspace --bins`",
            path.display()
        );
        let child = Command::new(path)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("the {binary} binary starts: {e}"));
        Self { child }
    }

    /// Sends a signal by name (`STOP` freezes the process, `CONT` resumes it).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
