//! `/metrics`: Prometheus text. Counters live in [`Metrics`] (the publisher's in its own
//! progress handle); the outbox depth is read from Postgres at scrape time.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::ApiError;
use crate::state::AppState;
use events::{event_log, outbox};

#[derive(Debug, Default)]
pub struct Metrics {
    /// The outbox publisher's progress on this instance (it stays at zero, not leading,
    /// with `--no-publisher`).
    pub publisher: Arc<publisher::Progress>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let head = event_log::head(&state.pool)
        .await
        .map_err(ApiError::internal)?;
    let checkpoint = outbox::checkpoint(&state.pool)
        .await
        .map_err(ApiError::internal)?;
    let m = &state.metrics;
    let body = format!(
        "# HELP keel_log_head_position Position of the newest event in the log.\n\
         # TYPE keel_log_head_position gauge\n\
         keel_log_head_position {head}\n\
         # HELP keel_outbox_position Last position JetStream acknowledged.\n\
         # TYPE keel_outbox_position gauge\n\
         keel_outbox_position {checkpoint}\n\
         # HELP keel_outbox_depth Events committed but not yet acknowledged by JetStream.\n\
         # TYPE keel_outbox_depth gauge\n\
         keel_outbox_depth {depth}\n\
         # HELP keel_outbox_published_total Events this instance published.\n\
         # TYPE keel_outbox_published_total counter\n\
         keel_outbox_published_total {published}\n\
         # HELP keel_publisher_leader 1 while this instance is the active publisher.\n\
         # TYPE keel_publisher_leader gauge\n\
         keel_publisher_leader {leader}\n\
         # HELP keel_ws_sockets Notification sockets open on this instance.\n\
         # TYPE keel_ws_sockets gauge\n\
         keel_ws_sockets {sockets}\n\
         # HELP keel_ws_evicted_total Sockets closed for being too slow (1013).\n\
         # TYPE keel_ws_evicted_total counter\n\
         keel_ws_evicted_total {evicted}\n\
         # HELP keel_hub_notifications_received_total Notifications the hub received from Redis.\n\
         # TYPE keel_hub_notifications_received_total counter\n\
         keel_hub_notifications_received_total {received}\n",
        depth = (head.0 - checkpoint.0).max(0),
        published = m.publisher.published(),
        leader = u8::from(m.publisher.is_leader()),
        sockets = state.hub.sockets(),
        evicted = state.hub.evictions(),
        received = state.hub.notifications_received(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
