//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer, probed at
//! most once a second).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ApiError;
use crate::state::AppState;

/// How long one dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one probe's answer is reused.
pub const PROBE_FRESH_FOR: Duration = Duration::from_secs(1);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn postgres_up(state: &AppState) -> bool {
    let probe = sqlx::query("SELECT 1").execute(&state.pool);
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
}

async fn nats_up(state: &AppState) -> bool {
    state.nats.connection_state() == async_nats::connection::State::Connected
        && matches!(
            tokio::time::timeout(PROBE_TIMEOUT, state.nats.flush()).await,
            Ok(Ok(()))
        )
}

/// On the cache's shared connection: a probe never opens a connection of its own.
async fn redis_up(state: &AppState) -> bool {
    state.ui_cache.ping().await.is_ok()
}

/// Which dependency is down, if any: Postgres, NATS, Redis, in that order.
type Down = Option<&'static str>;

/// The last readiness probe, reused for [`PROBE_FRESH_FOR`]: however often `/readyz` is
/// called, the dependencies are probed at most once a second (callers meanwhile wait for
/// the probe in progress and share its answer).
#[derive(Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Down)>>,
}

impl Readiness {
    async fn down(&self, state: &AppState) -> Down {
        let mut last = self.last.lock().await;
        if let Some((at, down)) = *last {
            if at.elapsed() < PROBE_FRESH_FOR {
                return down;
            }
        }
        let (postgres, nats, redis) =
            tokio::join!(postgres_up(state), nats_up(state), redis_up(state));
        let down = [("postgres", postgres), ("nats", nats), ("redis", redis)]
            .into_iter()
            .find_map(|(dependency, up)| (!up).then_some(dependency));
        *last = Some((Instant::now(), down));
        down
    }
}

/// 200 when Postgres, NATS and Redis all answer; else 503 naming the first that does not.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.down(&state).await {
        Some(dependency) => ApiError::Unavailable {
            dependency,
            retry_after_secs: 5,
        }
        .into_response(),
        None => Json(serde_json::json!({
            "status": "ready",
            "postgres": "up",
            "nats": "up",
            "redis": "up",
        }))
        .into_response(),
    }
}
