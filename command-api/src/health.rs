//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::error::ApiError;
use crate::state::AppState;

/// How long one dependency may take to answer a readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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

async fn redis_up(state: &AppState) -> bool {
    let probe = async {
        let mut connection = state.redis.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)))
}

/// 200 when Postgres, NATS and Redis all answer; else 503 naming the first that does not.
async fn readyz(State(state): State<AppState>) -> Response {
    let (postgres, nats, redis) =
        tokio::join!(postgres_up(&state), nats_up(&state), redis_up(&state));
    let down = [("postgres", postgres), ("nats", nats), ("redis", redis)]
        .into_iter()
        .find(|(_, up)| !up);
    match down {
        Some((dependency, _)) => ApiError::Unavailable {
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
