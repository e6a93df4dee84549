//! Keel's end-to-end test kit: a fresh database per test, the real command API bound on
//! port 0, a JWKS server of the dev issuer's keys, its introspection endpoint, and
//! bounded polling.
//!
//! Pipeline under test: HTTP command -> decide -> Postgres event log (-> JetStream ->
//! projectors / relay -> Redis -> WebSocket). Nothing here mocks
//! Postgres, NATS or Redis; only the identity provider is faked (`dev-issuer`). Every
//! process connects as its own Redis and NATS principal ([`principals`]), the kit's own
//! inspection and fault injection as the admin.

pub mod api_process;
pub mod browser;
pub mod forge;
pub mod identity_provider;
pub mod jwks_server;
pub mod nats_cluster;
pub mod nats_server;
pub mod notifications;
pub mod principals;
pub mod projections;
pub mod redis_cluster;
pub mod redis_server;
pub mod server_process;
pub mod stream;
pub mod test_app;
pub mod worker_process;

use std::future::Future;
use std::time::{Duration, Instant};

pub use identity_provider::IdentityProvider;
pub use jwks_server::JwksServer;
pub use test_app::TestApp;

/// Polls `probe` until it returns `Some`, at most `timeout`; on timeout, fails with the
/// last state the probe reported.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) if started.elapsed() >= timeout => {
                panic!("{what}: not true after {timeout:?}; last seen: {last}")
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// Asserts an RFC 9457 answer of `status` (problem+json, `X-Request-Id`, a `type`,
/// `title` and `detail`) and returns its body.
pub async fn problem(response: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(response.status(), status, "status");
    assert!(
        response.headers().contains_key("x-request-id"),
        "X-Request-Id"
    );
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    for field in ["type", "title", "detail"] {
        assert!(body[field].is_string(), "problem lacks {field}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}

/// A unique suffix for database, stream and key-prefix names of one test.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A subject prefix of one test (or benchmark): `test.<unique>`, two tokens, so that
/// NATS permissions can allow every test's subjects as `test.>`.
pub fn unique_subject_prefix() -> String {
    format!("test.{}", uuid::Uuid::new_v4().simple())
}

/// The server that hosts test databases (its `postgres` database is used to create them).
pub fn admin_database_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Creates an empty database named `keel_test_<unique>` and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    use sqlx::Connection;
    let admin = admin_database_url();
    let name = unique_name("keel_test");
    let mut connection = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut connection)
        .await?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("KEEL_TEST_DATABASE_URL has no database name"))?;
    Ok(format!("{base}/{name}"))
}

/// Appends `n` registrations of fresh users straight into the log, 1000 per
/// transaction (fast pre-fill for drain tests and benchmarks).
pub async fn prefill(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<()> {
    use domain::ids::{EventId, StreamId, UserId, Version};
    use domain::recorded::Metadata;
    use domain::{Event, UserEvent, user::UserRegistered};
    use events::event_log::{self, NewEvent};
    for start in (0..n).step_by(1000) {
        let rows: Vec<NewEvent> = (start..n.min(start + 1000))
            .map(|i| {
                let id = UserId::new();
                NewEvent {
                    event_id: EventId::new(),
                    stream_id: StreamId::user(id),
                    version: Version(1),
                    event: Event::User(UserEvent::Registered(UserRegistered {
                        id,
                        email: format!("u{i}@pii.test"),
                        name: format!("User {i}"),
                        roles: vec![],
                    })),
                    metadata: Metadata::default(),
                }
            })
            .collect();
        let mut tx = pool.begin().await?;
        event_log::insert(&mut tx, &rows).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// This process's log file of in-process servers (see [`init_test_logging`]).
pub fn test_log_path() -> std::path::PathBuf {
    let binary = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "test".to_owned());
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-logs")
        .join(format!("{binary}-{}.log", std::process::id()))
}

/// Logs of in-process servers go to `target/test-logs/<binary>-<pid>.log` at debug
/// level, so the suite can check them for secrets afterwards (PROMISES P16).
/// `KEEL_TEST_LOG=off` (set by the bench) turns this off.
pub fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if std::env::var("KEEL_TEST_LOG").is_ok_and(|v| v == "off") {
        return;
    }
    ONCE.call_once(|| {
        let path = test_log_path();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(file) = std::fs::File::create(path) {
            let _ = tracing_subscriber::fmt()
                .json()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .with_env_filter(tracing_subscriber::EnvFilter::new(
                    "debug,hyper=info,h2=info,reqwest=info,rustls=info,async_nats=info",
                ))
                .try_init();
        }
    });
}
