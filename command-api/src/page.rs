//! `/`: a minimal browser page (plain HTML and JS) that takes a token, trades it for a
//! single-use ticket (`POST /api/ws-tickets`), opens `/ws/notifications` with the
//! `keel.v1` and `ticket.<ticket>` subprotocols (no JWT in the handshake) and lists the
//! notifications as they arrive, resuming with `last-event-id.<offset>` after a drop.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

const INDEX: &str = include_str!("../static/index.html");
const SCRIPT: &str = include_str!("../static/notifications.js");
/// Scripts only from this origin (no inline script); the socket only to this origin.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/notifications.js", get(script))
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        INDEX,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
        ],
        SCRIPT,
    )
}
