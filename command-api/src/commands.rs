//! What every command endpoint shares: `If-Match`, `Idempotency-Key`, metadata, the
//! hand-over to the writer, and the response to its outcome (status, body, `ETag`,
//! `Location`, `Idempotent-Replayed`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::error::{ApiError, FieldError};
use crate::request_id::RequestId;
use crate::state::AppState;
use crate::writer::idempotency::{IdempotencyKey, Idempotent, StoredResponse};
use crate::writer::{AppendedEvent, CommandError, Outcome, Recorded, Submission};
use domain::Command;
use domain::ids::{EventId, Position, Version};
use domain::recorded::Metadata;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
static CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The authenticated request a command came in, minus its body.
pub struct CommandContext {
    pub principal: Principal,
    method: Method,
    path: String,
    headers: HeaderMap,
    request_id: RequestId,
}

impl FromRequestParts<AppState> for CommandContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, state).await?;
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(uuid::Uuid::new_v4().to_string()));
        Ok(Self {
            principal,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers.clone(),
            request_id,
        })
    }
}

/// How the endpoint answers success.
pub struct Answer {
    pub created: bool,
    pub location: Option<String>,
    /// Fields added to the response body.
    pub extra: Vec<(&'static str, serde_json::Value)>,
    /// Adds `created_at`: when the (last) event was recorded.
    pub stamped: bool,
}

impl Answer {
    pub fn ok() -> Self {
        Self {
            created: false,
            location: None,
            extra: vec![],
            stamped: false,
        }
    }

    pub fn created(location: String) -> Self {
        Self {
            created: true,
            location: Some(location),
            extra: vec![],
            stamped: false,
        }
    }

    /// The response to a recorded command: 201 if it created something, else 200; the
    /// body names the stream, its version and position and the events appended.
    fn render(&self, recorded: &Recorded) -> StoredResponse {
        let events: Vec<EventJson> = recorded.events.iter().map(EventJson::from).collect();
        let mut body = serde_json::json!({
            "id": recorded.stream.aggregate_id(),
            "stream_id": recorded.stream.to_string(),
            "version": recorded.version,
            "position": recorded.position,
            "events": events,
        });
        if let Some(fields) = body.as_object_mut() {
            for (name, value) in &self.extra {
                fields.insert((*name).to_owned(), value.clone());
            }
            if self.stamped {
                fields.insert(
                    "created_at".to_owned(),
                    serde_json::json!(recorded.recorded_at),
                );
            }
        }
        StoredResponse {
            // A command that creates something but appended nothing (a repeated
            // revocation) created nothing.
            status: if self.created && !recorded.events.is_empty() {
                201
            } else {
                200
            },
            location: self.location.clone(),
            body,
        }
    }
}

/// An appended event in a command's response.
#[derive(Serialize)]
struct EventJson {
    id: EventId,
    #[serde(rename = "type")]
    event_type: &'static str,
    version: Version,
    position: Position,
}

impl From<&AppendedEvent> for EventJson {
    fn from(event: &AppendedEvent) -> Self {
        Self {
            id: event.id,
            event_type: event.event_type,
            version: event.version,
            position: event.position,
        }
    }
}

impl CommandContext {
    /// Runs one command through the writer and answers it. `body` is the raw request
    /// body (empty for commands without one).
    pub async fn execute(
        &self,
        state: &AppState,
        body: &[u8],
        command: Command,
        answer: Answer,
    ) -> Result<Response, ApiError> {
        execute(state, self, body, command, answer).await
    }
}

async fn execute(
    state: &AppState,
    context: &CommandContext,
    body: &[u8],
    command: Command,
    answer: Answer,
) -> Result<Response, ApiError> {
    let if_match = if_match(&context.headers)?;
    let answer = Arc::new(answer);
    // With a key, the writer renders the response to keep (before it commits) just as
    // the answer below is rendered.
    let idempotency = idempotency_key(context, body)?.map(|key| {
        let answer = answer.clone();
        Idempotent {
            key,
            render: Box::new(move |recorded| answer.render(recorded)),
        }
    });
    let submission = Submission {
        principal: context.principal.user_id,
        admin: context.principal.is_admin(),
        command,
        if_match,
        idempotency,
        metadata: metadata(context),
    };
    match state.writer.submit(submission).await {
        Ok(outcome) => {
            if changes_policy(&outcome) {
                // This instance enforces the change before it answers; the others follow
                // from the log (and Redis) within a second.
                if let Err(error) = state.policy.catch_up().await {
                    tracing::warn!(error = %error, "reading policy events failed");
                }
            }
            Ok(match outcome {
                Outcome::Recorded(recorded) => respond(answer.render(&recorded), false),
                Outcome::Replayed(stored) => respond(stored, true),
            })
        }
        Err(CommandError::Domain(error)) => Err(error.into()),
        Err(CommandError::PreconditionFailed { current }) => {
            Err(ApiError::PreconditionFailed { current })
        }
        Err(CommandError::IdempotencyKeyReused) => Err(ApiError::invalid(vec![FieldError::new(
            "Idempotency-Key",
            "already used with a different request",
        )])),
        Err(error @ CommandError::Unreadable) => Err(ApiError::internal(error)),
        Err(CommandError::Unavailable) => Err(ApiError::Unavailable {
            dependency: "postgres",
            retry_after_secs: 1,
        }),
    }
}

/// Whether the command appended an event that changes what tokens may do (a replay's
/// too: the answer that first reported it may have been lost before this instance
/// caught up).
fn changes_policy(outcome: &Outcome) -> bool {
    let is_policy = |t: &str| events::policy::EVENT_TYPES.contains(&t);
    match outcome {
        Outcome::Recorded(recorded) => recorded.events.iter().any(|e| is_policy(e.event_type)),
        Outcome::Replayed(stored) => stored.body["events"].as_array().is_some_and(|events| {
            events
                .iter()
                .any(|e| e["type"].as_str().is_some_and(is_policy))
        }),
    }
}

/// The HTTP response: the status, the body, `ETag` (the body's version), `Location`, and
/// `Idempotent-Replayed: true` for a replay.
fn respond(stored: StoredResponse, replayed: bool) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let version = stored
        .body
        .get("version")
        .and_then(serde_json::Value::as_i64);
    let mut response = (status, axum::Json(stored.body)).into_response();
    let headers = response.headers_mut();
    if let Some(etag) = version.and_then(|v| HeaderValue::from_str(&format!("\"{v}\"")).ok()) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(location) = stored.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// `If-Match: "<version>"` (a weak `W/` prefix and a bare number are tolerated; `*`
/// asks for nothing).
pub fn if_match(headers: &HeaderMap) -> Result<Option<Version>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || ApiError::invalid(vec![FieldError::new("If-Match", "must be \"<version>\"")]);
    let text = value.to_str().map_err(|_| invalid())?.trim();
    if text == "*" {
        return Ok(None);
    }
    let text = text.strip_prefix("W/").unwrap_or(text);
    let text = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    text.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(|v| Some(Version(v)))
        .ok_or_else(invalid)
}

/// The request's `Idempotency-Key`, checked: at most 255 visible ASCII characters.
pub fn idempotency_key_text(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(&IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid(vec![FieldError::new(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )])
        })
}

fn idempotency_key(
    context: &CommandContext,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(key) = idempotency_key_text(&context.headers)? else {
        return Ok(None);
    };
    let mut hash = Sha256::new();
    hash.update(context.method.as_str().as_bytes());
    hash.update(b"\n");
    hash.update(context.path.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    Ok(Some(IdempotencyKey {
        key: key.to_owned(),
        request_hash: hash.finalize().to_vec(),
    }))
}

fn header_text(headers: &HeaderMap, name: &HeaderName, max: usize) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

fn metadata(context: &CommandContext) -> Metadata {
    let request_id = context.request_id.0.clone();
    Metadata {
        correlation_id: Some(
            header_text(&context.headers, &CORRELATION_ID, 128)
                .unwrap_or_else(|| request_id.clone()),
        ),
        causation_id: Some(request_id.clone()),
        actor_id: Some(context.principal.user_id),
        request_id: Some(request_id),
        traceparent: header_text(&context.headers, &TRACEPARENT, 55),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::ids::{PostId, StreamId};

    fn recorded(events: usize) -> Recorded {
        let stream = StreamId::post(PostId::new());
        Recorded {
            stream,
            version: Version(events as i64),
            position: Position(7),
            events: (1..=events)
                .map(|v| AppendedEvent {
                    id: EventId::new(),
                    event_type: "post.created",
                    version: Version(v as i64),
                    position: Position(7),
                })
                .collect(),
            recorded_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_creating_command_answers_201_with_its_extra_fields_and_stamp() {
        let answer = Answer {
            extra: vec![("comment_id", serde_json::json!("c"))],
            stamped: true,
            ..Answer::created("/api/posts/p".to_owned())
        };
        let recorded = recorded(1);
        let response = answer.render(&recorded);
        assert_eq!(response.status, 201);
        assert_eq!(response.location.as_deref(), Some("/api/posts/p"));
        assert_eq!(
            response.body,
            serde_json::json!({
                "id": recorded.stream.aggregate_id(),
                "stream_id": recorded.stream.to_string(),
                "version": 1,
                "position": 7,
                "events": [{
                    "id": recorded.events[0].id,
                    "type": "post.created",
                    "version": 1,
                    "position": 7,
                }],
                "comment_id": "c",
                "created_at": recorded.recorded_at,
            })
        );
    }

    #[test]
    fn a_creating_command_that_appended_nothing_answers_200() {
        let answer = Answer::created("/api/admin/revocations".to_owned());
        assert_eq!(answer.render(&recorded(0)).status, 200);
        assert_eq!(Answer::ok().render(&recorded(1)).status, 200);
    }

    #[test]
    fn the_response_carries_the_version_as_etag_and_marks_a_replay() {
        let stored = Answer::created("/api/posts/p".to_owned()).render(&recorded(1));
        let fresh = respond(stored.clone(), false);
        assert_eq!(fresh.status(), StatusCode::CREATED);
        assert_eq!(fresh.headers()[header::ETAG], "\"1\"");
        assert_eq!(fresh.headers()[header::LOCATION], "/api/posts/p");
        assert!(!fresh.headers().contains_key(&IDEMPOTENT_REPLAYED));
        let replayed = respond(stored, true);
        assert_eq!(replayed.headers()[&IDEMPOTENT_REPLAYED], "true");
    }
}
