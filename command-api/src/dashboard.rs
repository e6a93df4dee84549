//! `GET /api/me/dashboard`: the caller's UI read model, served cache-aside from Redis and
//! still from Postgres when Redis is down or slow (`X-Cache: hit|miss|bypass`).

use std::error::Error as _;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Principal;
use crate::consistency::{self, MinPosition};
use crate::error::ApiError;
use crate::state::AppState;
use crate::users::UserView;
use domain::ids::{CommentId, Position, PostId, UserId};
use events::read_model::{self, DASHBOARD_TTL_SECS, Projection};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// How many of the latest comments on the caller's posts the dashboard shows.
pub const RECENT_COMMENTS: i64 = 10;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/me/dashboard", get(dashboard))
}

/// What is stored at the user's cache key: the body, and the position of the log the
/// model had applied at least when the body was read.
#[derive(Serialize, Deserialize)]
struct Cached {
    position: Position,
    body: serde_json::Value,
}

/// Where the answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Hit,
    Miss,
    /// Redis did not answer: Postgres did, and nothing was cached.
    Bypass,
}

impl Lookup {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Bypass => "bypass",
        })
    }
}

fn answer(body: serde_json::Value, lookup: Lookup) -> Response {
    ([(X_CACHE.clone(), lookup.header())], Json(body)).into_response()
}

/// The caller's own dashboard (the cache key is the caller's: no one else's is reachable).
async fn dashboard(
    State(state): State<AppState>,
    principal: Principal,
    min_position: MinPosition,
) -> Result<Response, ApiError> {
    let user = principal.user_id;
    let key = read_model::dashboard_key(&state.stream, user);
    let wanted = min_position.position();
    let lookup = match state.ui_cache.get(&key).await {
        Ok(Some(text)) => match serde_json::from_str::<Cached>(&text) {
            Ok(cached) if cached.position >= wanted => return Ok(answer(cached.body, Lookup::Hit)),
            // Older than the client has seen: read the model once it is there.
            Ok(_) => Lookup::Miss,
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    user_id = %user,
                    "unreadable cached dashboard; replacing it"
                );
                Lookup::Miss
            }
        },
        Ok(None) => Lookup::Miss,
        Err(error) => {
            tracing::warn!(
                error = %error,
                cause = ?error.source(),
                user_id = %user,
                "dashboard cache unavailable; answering from postgres"
            );
            Lookup::Bypass
        }
    };
    min_position.wait(&state, &[Projection::Dashboard]).await?;
    let (checkpoint, body) = read(&state, user).await?;
    let body = serde_json::to_value(body).map_err(ApiError::internal)?;
    if lookup == Lookup::Miss {
        // The rows were read after the model applied `wanted` (when asked for), so they
        // reflect at least that much even if the stored checkpoint is behind.
        let cached = Cached {
            position: checkpoint.max(wanted),
            body,
        };
        let text = serde_json::to_string(&cached).map_err(ApiError::internal)?;
        if let Err(error) = state.ui_cache.set(&key, &text, DASHBOARD_TTL_SECS).await {
            tracing::warn!(
                error = %error,
                cause = ?error.source(),
                user_id = %user,
                "caching the dashboard failed"
            );
        }
        return Ok(answer(cached.body, lookup));
    }
    Ok(answer(body, lookup))
}

#[derive(Serialize)]
struct PostRef {
    id: PostId,
    title: String,
}

#[derive(sqlx::FromRow)]
struct PostRow {
    #[sqlx(try_from = "uuid::Uuid")]
    id: PostId,
    title: String,
    status: String,
    like_count: i32,
}

#[derive(Serialize)]
struct AuthorRef {
    id: UserId,
    name: String,
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    #[sqlx(try_from = "uuid::Uuid")]
    id: CommentId,
    #[sqlx(try_from = "uuid::Uuid")]
    post_id: PostId,
    #[sqlx(try_from = "uuid::Uuid")]
    author_id: UserId,
    author_name: String,
    body: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct RecentComment {
    id: CommentId,
    post_id: PostId,
    author: AuthorRef,
    body: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Dashboard {
    user: UserView,
    drafts: Vec<PostRef>,
    published: Vec<PostRef>,
    likes_received: i64,
    recent_comments: Vec<RecentComment>,
}

/// The model's checkpoint and the dashboard, from one snapshot of `rm_dashboard`; 404
/// when the model has no such user.
async fn read(state: &AppState, user: UserId) -> Result<(Position, Dashboard), ApiError> {
    let schema = Projection::Dashboard.schema();
    let tables = ["checkpoint", "users", "posts", "comments"].map(|t| format!("{schema}.{t}"));
    let mut snapshot = consistency::snapshot(&state.pool, &tables)
        .await
        .map_err(ApiError::internal)?;
    let checkpoint = read_model::checkpoint(&mut *snapshot, Projection::Dashboard)
        .await
        .map_err(ApiError::internal)?;
    let profile = UserView::find(&mut *snapshot, schema, user)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound("no dashboard for this user yet".to_owned()))?;
    let posts: Vec<PostRow> = sqlx::query_as(&format!(
        "SELECT id, title, status, like_count FROM {schema}.posts
         WHERE author_id = $1 AND status IN ('draft', 'published')
         ORDER BY position DESC"
    ))
    .bind(user.0)
    .fetch_all(&mut *snapshot)
    .await
    .map_err(ApiError::internal)?;
    let comments: Vec<CommentRow> = sqlx::query_as(&format!(
        "SELECT c.id, c.post_id, c.author_id, coalesce(u.name, '') AS author_name, c.body,
                c.created_at
         FROM {schema}.comments c LEFT JOIN {schema}.users u ON u.id = c.author_id
         WHERE c.recipient = $1 ORDER BY c.position DESC LIMIT $2"
    ))
    .bind(user.0)
    .bind(RECENT_COMMENTS)
    .fetch_all(&mut *snapshot)
    .await
    .map_err(ApiError::internal)?;
    let likes_received = posts
        .iter()
        .filter(|p| p.status == "published")
        .map(|p| i64::from(p.like_count))
        .sum();
    let (published, drafts): (Vec<PostRow>, Vec<PostRow>) =
        posts.into_iter().partition(|p| p.status == "published");
    let refs = |posts: Vec<PostRow>| {
        posts
            .into_iter()
            .map(|p| PostRef {
                id: p.id,
                title: p.title,
            })
            .collect()
    };
    let dashboard = Dashboard {
        user: profile,
        drafts: refs(drafts),
        published: refs(published),
        likes_received,
        recent_comments: comments
            .into_iter()
            .map(|c| RecentComment {
                id: c.id,
                post_id: c.post_id,
                author: AuthorRef {
                    id: c.author_id,
                    name: c.author_name,
                },
                body: c.body,
                created_at: c.created_at,
            })
            .collect(),
    };
    Ok((checkpoint, dashboard))
}
