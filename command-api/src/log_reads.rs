//! The admin reads of the log itself: the global log by position and one stream by
//! version, each event as a structured CloudEvent (a `application/cloudevents-batch+json`
//! array).

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::{self, Principal};
use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;
use crate::validation::{Fields, PathText, parse_id};
use domain::envelope;
use domain::ids::{Position, StreamId, Version};
use domain::recorded::RecordedEvent;
use events::event_log;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/events", get(global_log))
        .route("/api/streams/{stream_id}/events", get(stream_events))
}

/// `after` and `limit`, as text so that a bad value is a 422 naming it.
#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<String>,
}

impl Page {
    fn parse(&self) -> Result<(i64, i64), ApiError> {
        let mut fields = Fields::default();
        let after = match self.after.as_deref().map(str::parse::<i64>) {
            None => 0,
            Some(Ok(after)) if after >= 0 => after,
            Some(_) => {
                fields.add("after", "must be a non-negative integer");
                0
            }
        };
        let limit = match self.limit.as_deref().map(str::parse::<i64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => limit,
            Some(_) => {
                fields.add("limit", "must be an integer from 1 to 1000");
                0
            }
        };
        fields.ok()?;
        Ok((after, limit))
    }
}

fn batch(events: &[RecordedEvent]) -> Response {
    let body: Vec<serde_json::Value> = events.iter().map(envelope::to_json).collect();
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/cloudevents-batch+json"),
    );
    response
}

/// `GET /api/events?after=<position>&limit=<n>`: the global log in position order.
async fn global_log(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    principal.require_admin("reading the log")?;
    auth::ensure_active(&state, &principal).await?;
    let (after, limit) = page.parse()?;
    let events = event_log::read_all(&state.pool, Position(after), limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(batch(&events))
}

/// `GET /api/streams/{stream_id}/events?after=<version>&limit=<n>`: one stream.
async fn stream_events(
    State(state): State<AppState>,
    principal: Principal,
    PathText(stream_id): PathText,
    Query(page): Query<Page>,
) -> Result<Response, ApiError> {
    principal.require_admin("reading the log")?;
    auth::ensure_active(&state, &principal).await?;
    let stream: StreamId = parse_id(&stream_id, "stream")?;
    let (after, limit) = page.parse()?;
    let events = event_log::read_stream(&state.pool, &stream, Version(after), limit)
        .await
        .map_err(ApiError::internal)?;
    if events.is_empty()
        && event_log::stream_version(&state.pool, &stream)
            .await
            .map_err(ApiError::internal)?
            == Version::NONE
    {
        return Err(ApiError::NotFound("no such stream".to_owned()));
    }
    Ok(batch(&events))
}
