//! `GET /ws/notifications`: the WebSocket hub (the end of the pipeline: … -> relay ->
//! Redis -> **hub -> browser**).
//!
//! - [`hub`]: this instance's sockets by user; notifications fanned out to bounded queues.
//! - [`subscription`]: one Redis connection holding the channels of this hub's users.
//! - [`session`]: one socket: recovery, live frames, keepalive, expiry, closing.
//! - [`recovery`]: reads of a user's history in Redis (written by the relay).
//!
//! The upgrade is refused (RFC 9457, before any socket exists) for a token in the query
//! string (401), an Origin not in `KEEL_ALLOWED_ORIGINS` (403), a missing, invalid or
//! revoked token or ticket (401), a deactivated user (403), an offset Keel did not
//! issue (422), a user at its socket limit (429) and an instance at its own (503,
//! [`slots`]). The user is only ever the verified token's `sub`. Browsers, which cannot
//! set headers on a WebSocket, trade their token for a single-use ticket
//! (`POST /api/ws-tickets`, [`ticket`]) and offer the subprotocols `keel.v1`,
//! `ticket.<ticket>` and optionally `last-event-id.<offset>` (`bearer.<jwt>` is still
//! accepted); the server selects `keel.v1` and never echoes (or logs) the others.

pub mod hub;
pub mod recovery;
pub mod session;
pub mod slots;
pub mod subscription;
pub mod ticket;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::auth::Principal;
use crate::error::{ApiError, FieldError, problem};
use crate::state::AppState;
use notify::{Delivered, Offset};
use session::Session;

/// The subprotocol the server speaks (and the only one it ever selects).
pub const PROTOCOL: &str = "keel.v1";
const BEARER_PROTOCOL: &str = "bearer.";
const TICKET_PROTOCOL: &str = "ticket.";
const RESUME_PROTOCOL: &str = "last-event-id.";
/// Largest frame or message a client may send (clients only answer pings).
pub const MAX_INCOMING_BYTES: usize = 4096;
/// Query parameters that would carry a token, which must never travel in a URL.
const TOKEN_PARAMETERS: [&str; 6] = [
    "access_token",
    "token",
    "jwt",
    "bearer",
    "id_token",
    "ticket",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ws/notifications", get(open))
        .route("/api/ws-tickets", post(mint_ticket))
}

/// `POST /api/ws-tickets`: a single-use ticket for one socket of a registered, active
/// user, good for [`ticket::TTL_SECS`].
async fn mint_ticket(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, ApiError> {
    if !principal.registered {
        return Err(ApiError::Forbidden(
            "register first (POST /api/users)".to_owned(),
        ));
    }
    let ticket = state
        .hub
        .tickets
        .mint(&principal)
        .await
        .map_err(|error| redis_unavailable("minting a socket ticket", &error))?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(serde_json::json!({ "ticket": ticket, "expires_in": ticket::TTL_SECS })),
    )
        .into_response())
}

/// What the client offered in `Sec-WebSocket-Protocol`.
#[derive(Default)]
struct Offered<'a> {
    token: Option<&'a str>,
    ticket: Option<&'a str>,
    resume: Option<&'a str>,
}

fn offered(headers: &HeaderMap) -> Offered<'_> {
    let mut offered = Offered::default();
    let protocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    for protocol in protocols {
        if let Some(token) = protocol.strip_prefix(BEARER_PROTOCOL) {
            offered.token = Some(token);
        } else if let Some(ticket) = protocol.strip_prefix(TICKET_PROTOCOL) {
            offered.ticket = Some(ticket);
        } else if let Some(offset) = protocol.strip_prefix(RESUME_PROTOCOL) {
            offered.resume = Some(offset);
        }
    }
    offered
}

fn token_in_query(uri: &Uri) -> bool {
    uri.query().is_some_and(|query| {
        query.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            TOKEN_PARAMETERS
                .iter()
                .any(|t| name.eq_ignore_ascii_case(t))
                || value.starts_with("eyJ")
        })
    })
}

async fn open(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if token_in_query(&uri) {
        return Err(ApiError::Unauthorized(
            "tokens and tickets in the query string are refused: send Authorization: \
             Bearer, or offer the keel.v1 and ticket.<ticket> subprotocols"
                .to_owned(),
        ));
    }
    let hub = state.hub.clone();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = hub.allowed_origins.is_empty()
            || origin
                .to_str()
                .is_ok_and(|o| hub.allowed_origins.iter().any(|a| a == o));
        if !allowed {
            return Err(ApiError::Forbidden(
                "this Origin may not open notification sockets".to_owned(),
            ));
        }
    }
    let offered = offered(&headers);
    let principal = match (crate::auth::bearer_token_in(&headers), offered.ticket) {
        (None, Some(ticket)) => redeem(&state, ticket).await?,
        (token, _) => crate::auth::authenticate(&state, token.or(offered.token)).await?,
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(offered.resume)
        .map(|raw| {
            raw.trim().parse::<Offset>().map_err(|_| ApiError::Invalid {
                detail: "Last-Event-ID is not an offset Keel issued".to_owned(),
                errors: vec![FieldError::new(
                    "Last-Event-ID",
                    "not a notification offset",
                )],
            })
        })
        .transpose()?;
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return Ok(problem(
                rejection.status(),
                "open /ws/notifications as a WebSocket (Upgrade: websocket)",
            ));
        }
    };
    // Sockets get no leeway on `exp`: one would only be closed (4001) right away.
    if principal.expires_at <= crate::auth::now() {
        return Err(ApiError::Unauthorized("token expired".to_owned()));
    }
    let slot = hub.slots.take(principal.user_id)?;
    // Where the user's notifications stand now, read before the 101: a socket that
    // starts live misses nothing published after its client saw it open, and no socket
    // is accepted while its history cannot be read.
    let tail = hub
        .history
        .tail(principal.user_id)
        .await
        .map_err(|error| redis_unavailable("reading the notification history", &error))?;
    let cursor = resume.map_or(tail, Delivered::up_to);
    let session = Session {
        hub: hub.clone(),
        principal,
        cursor,
    };
    let tracker = hub.sessions.clone();
    Ok(upgrade
        .protocols([PROTOCOL])
        // Small reads only: the default 128 KiB buffer is zeroed on every poll of the
        // socket, which was 16 % of the hub's CPU at 5,000 sockets.
        .read_buffer_size(MAX_INCOMING_BYTES)
        .max_frame_size(MAX_INCOMING_BYTES)
        .max_message_size(MAX_INCOMING_BYTES)
        .on_failed_upgrade(|error| tracing::debug!(error = %error, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                session.run(socket).await;
                drop(slot);
            })
        })
        .into_response())
}

/// 503 for a request that needed Redis and could not have it; the cause is logged.
fn redis_unavailable(what: &str, error: &dyn std::error::Error) -> ApiError {
    tracing::warn!(error = %error, what, "redis unavailable");
    ApiError::Unavailable {
        dependency: "redis",
        retry_after_secs: 1,
    }
}

/// The principal a ticket was minted for, consumed now and authorized as of now.
async fn redeem(state: &AppState, ticket: &str) -> Result<Principal, ApiError> {
    let refused = || ApiError::Unauthorized("ticket unknown, used or expired".to_owned());
    if ticket.is_empty() || ticket.len() > 64 {
        return Err(refused());
    }
    let principal = state
        .hub
        .tickets
        .redeem(ticket)
        .await
        .map_err(|error| redis_unavailable("redeeming a socket ticket", &error))?
        .ok_or_else(refused)?;
    tracing::Span::current().record("user_id", tracing::field::display(principal.user_id));
    state.policy.authorize(principal).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_the_query_string_are_recognized() {
        for uri in [
            "/ws/notifications?access_token=x",
            "/ws/notifications?a=1&TOKEN=x",
            "/ws/notifications?x=eyJhbGciOi",
        ] {
            assert!(token_in_query(&uri.parse().expect("uri")), "{uri}");
        }
        assert!(!token_in_query(
            &"/ws/notifications?lang=en".parse().expect("uri")
        ));
        assert!(!token_in_query(&"/ws/notifications".parse().expect("uri")));
    }

    #[test]
    fn subprotocols_carry_the_token_and_the_offset() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "keel.v1, bearer.abc.def.ghi, ticket.T1ck3t_-, last-event-id.e.1-0"
                .parse()
                .expect("header"),
        );
        let offered = offered(&headers);
        assert_eq!(offered.token, Some("abc.def.ghi"));
        assert_eq!(offered.ticket, Some("T1ck3t_-"));
        assert_eq!(offered.resume, Some("e.1-0"));
    }
}
