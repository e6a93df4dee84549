//! The projectors under test: in-process workers or the real binary (to SIGKILL), on the
//! test app's own database, stream and cache prefix; and the checks every projection test
//! ends with: the projections caught up with the log, and each live model equal to a
//! model rebuilt from the log.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use events::read_model::Projection;
use serde_json::Value;

use crate::{TestApp, eventually};

/// The projectors' configuration for `app`'s database, stream and subjects.
pub fn config(app: &TestApp) -> projectors::Config {
    projectors::Config {
        database_url: app.database_url.clone(),
        nats_url: app.nats_url.clone(),
        redis_url: app.redis_url.clone(),
        stream: app.stream.clone(),
        subject_prefix: app.subject_prefix.clone(),
    }
}

/// Every projection running in this process until dropped or stopped.
pub struct Running {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(app: &TestApp) -> Self {
        Self::start_with(config(app), &Projection::ALL).await
    }

    pub async fn start_with(config: projectors::Config, projections: &[Projection]) -> Self {
        let workers = projectors::build(&config, projections)
            .await
            .expect("the projectors start");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(workers.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops gracefully (the batches in hand are finished) and waits.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The real `projectors` binary as a child process.
pub struct ProjectorProcess {
    child: Child,
}

impl ProjectorProcess {
    pub fn spawn(app: &TestApp) -> Self {
        let binary = crate::api_process::binary_named("projectors");
        assert!(
            binary.exists(),
            "{} is missing: run `cargo build --workspace --bins`",
            binary.display()
        );
        let child = Command::new(binary)
            .env("DATABASE_URL", &app.database_url)
            .env("NATS_URL", &app.nats_url)
            .env("REDIS_URL", &app.redis_url)
            .env("KEEL_STREAM", &app.stream)
            .env("KEEL_SUBJECT_PREFIX", &app.subject_prefix)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the projectors binary starts");
        Self { child }
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProjectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every projection has applied the whole log.
pub async fn caught_up(pool: &sqlx::PgPool, within: Duration) {
    eventually(within, "every projection applied the log", || async {
        let lines = projectors::operations::status(pool)
            .await
            .map_err(|e| e.to_string())?;
        if lines.iter().all(|l| l.lag == 0) {
            Ok(())
        } else {
            Err(lines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "))
        }
    })
    .await;
}

/// A model's tables (and its versions per stream) as sorted JSON rows: two models are
/// equal when their dumps are.
pub async fn dump(pool: &sqlx::PgPool, projection: Projection) -> BTreeMap<String, Vec<Value>> {
    let schema = projection.schema();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_name <> 'checkpoint' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("listing the model's tables");
    let mut dump = BTreeMap::new();
    for table in tables {
        let rows: Vec<Value> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) - 'failed_at' FROM {schema}.{table} t ORDER BY to_jsonb(t)::text"
        ))
        .fetch_all(pool)
        .await
        .expect("reading the model");
        dump.insert(table, rows);
    }
    dump
}

/// Asserts that every live model equals the model rebuilt from the log (the rebuild then
/// stays in place).
pub async fn assert_live_equals_rebuilt(app: &TestApp) {
    let (pool, cache) = projectors::open(&config(app)).await.expect("open");
    for projection in Projection::ALL {
        let live = dump(&pool, projection).await;
        projectors::rebuild::rebuild(&pool, projection, &cache)
            .await
            .expect("the rebuild succeeds");
        let rebuilt = dump(&pool, projection).await;
        for (table, rows) in &rebuilt {
            assert_eq!(
                live.get(table),
                Some(rows),
                "{projection}.{table}: the live model differs from the rebuilt one"
            );
        }
        assert_eq!(live.len(), rebuilt.len(), "{projection}: tables differ");
    }
}
