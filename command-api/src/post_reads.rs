//! The Blog's reads: published posts newest first (keyset pages) and one post with its
//! comments, from the `posts` read model, with author names from the `authors` one.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use crate::auth::Principal;
use crate::consistency::{self, MinPosition};
use crate::error::ApiError;
use crate::query::Query;
use crate::state::AppState;
use crate::validation::{Fields, PathText, parse_id};
use domain::ids::{CommentId, PostId, UserId, Version};
use events::read_model::Projection;

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;

/// Both posts and their authors' names stand behind every answer here.
const MODELS: [Projection; 2] = [Projection::Posts, Projection::Authors];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/posts", get(list))
        .route("/api/posts/{id}", get(get_post))
}

/// A post's author, or a comment's: the name as the `authors` model has it ("" until
/// that model has seen the user).
#[derive(Serialize)]
struct AuthorRef {
    id: UserId,
    name: String,
}

/// Where a page ends: the `(published_at, id)` of its last post. On the wire it is
/// opaque: URL-safe base64 of `<microseconds since the epoch>.<post id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageCursor {
    published_at: DateTime<Utc>,
    id: PostId,
}

impl PageCursor {
    fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.published_at.timestamp_micros(),
            self.id.0.simple()
        ))
    }

    fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let (micros, id) = text.split_once('.')?;
        Some(Self {
            published_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            id: PostId(Uuid::try_parse(id).ok()?),
        })
    }
}

/// The query of `GET /api/posts`, as text so that a bad value is a 422 naming it.
#[derive(Deserialize)]
struct Page {
    author_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

struct ParsedPage {
    author: Option<UserId>,
    limit: i64,
    after: Option<PageCursor>,
}

impl Page {
    fn parse(&self) -> Result<ParsedPage, ApiError> {
        let mut fields = Fields::default();
        let author = match self.author_id.as_deref().map(str::parse::<UserId>) {
            None => None,
            Some(Ok(author)) => Some(author),
            Some(Err(_)) => {
                fields.add("author_id", "must be a UUID");
                None
            }
        };
        let limit = match self.limit.as_deref().map(str::parse::<i64>) {
            None => DEFAULT_LIMIT,
            Some(Ok(limit)) if (1..=MAX_LIMIT).contains(&limit) => limit,
            Some(_) => {
                fields.add("limit", "must be an integer from 1 to 100");
                0
            }
        };
        let after = match self.cursor.as_deref().map(PageCursor::decode) {
            None => None,
            Some(Some(cursor)) => Some(cursor),
            Some(None) => {
                fields.add("cursor", "must be the next_cursor of a previous page");
                None
            }
        };
        fields.ok()?;
        Ok(ParsedPage {
            author,
            limit,
            after,
        })
    }
}

#[derive(sqlx::FromRow)]
struct SummaryRow {
    #[sqlx(try_from = "uuid::Uuid")]
    id: PostId,
    title: String,
    #[sqlx(try_from = "uuid::Uuid")]
    author_id: UserId,
    author_name: String,
    published_at: DateTime<Utc>,
    comment_count: i32,
    like_count: i32,
}

#[derive(Serialize)]
struct Summary {
    id: PostId,
    title: String,
    author: AuthorRef,
    published_at: DateTime<Utc>,
    comment_count: i32,
    like_count: i32,
}

#[derive(Serialize)]
struct PostPage {
    items: Vec<Summary>,
    next_cursor: Option<String>,
}

/// `GET /api/posts?author_id=&limit=&cursor=`: anyone authenticated.
async fn list(
    State(state): State<AppState>,
    _principal: Principal,
    min_position: MinPosition,
    Query(page): Query<Page>,
) -> Result<Json<PostPage>, ApiError> {
    let page = page.parse()?;
    min_position.wait(&state, &MODELS).await?;
    let mut query = QueryBuilder::<Postgres>::new(format!(
        "SELECT p.id, p.title, p.author_id, coalesce(a.name, '') AS author_name,
                p.published_at, p.comment_count, p.like_count
         FROM {}.posts p LEFT JOIN {}.authors a ON a.id = p.author_id
         WHERE p.status = 'published' AND p.published_at IS NOT NULL",
        Projection::Posts.schema(),
        Projection::Authors.schema()
    ));
    if let Some(author) = page.author {
        query.push(" AND p.author_id = ").push_bind(author.0);
    }
    if let Some(after) = page.after {
        query
            .push(" AND (p.published_at, p.id) < (")
            .push_bind(after.published_at)
            .push(", ")
            .push_bind(after.id.0)
            .push(")");
    }
    // One more than the page: whether it exists says if there is a next page.
    query
        .push(" ORDER BY p.published_at DESC, p.id DESC LIMIT ")
        .push_bind(page.limit + 1);
    let mut rows: Vec<SummaryRow> = query
        .build_query_as()
        .fetch_all(&state.pool)
        .await
        .map_err(ApiError::internal)?;
    let more = rows.len() as i64 > page.limit;
    rows.truncate(page.limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| PageCursor {
            published_at: last.published_at,
            id: last.id,
        })
        .map(PageCursor::encode);
    let items = rows
        .into_iter()
        .map(|row| Summary {
            id: row.id,
            title: row.title,
            author: AuthorRef {
                id: row.author_id,
                name: row.author_name,
            },
            published_at: row.published_at,
            comment_count: row.comment_count,
            like_count: row.like_count,
        })
        .collect();
    Ok(Json(PostPage { items, next_cursor }))
}

#[derive(sqlx::FromRow)]
struct PostRow {
    #[sqlx(try_from = "uuid::Uuid")]
    id: PostId,
    title: String,
    body: String,
    status: String,
    #[sqlx(try_from = "uuid::Uuid")]
    author_id: UserId,
    author_name: String,
    like_count: i32,
    #[sqlx(try_from = "i64")]
    version: Version,
}

#[derive(sqlx::FromRow)]
struct CommentRow {
    #[sqlx(try_from = "uuid::Uuid")]
    id: CommentId,
    #[sqlx(try_from = "uuid::Uuid")]
    author_id: UserId,
    author_name: String,
    body: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Comment {
    id: CommentId,
    author: AuthorRef,
    body: String,
    created_at: DateTime<Utc>,
}

#[derive(Serialize)]
struct Post {
    id: PostId,
    title: String,
    body: String,
    status: String,
    author: AuthorRef,
    comments: Vec<Comment>,
    like_count: i32,
    version: Version,
}

/// `GET /api/posts/{id}`: a published post for anyone authenticated; a draft or deleted
/// one only for its author (it does not exist for anyone else, admins included).
async fn get_post(
    State(state): State<AppState>,
    PathText(id): PathText,
    principal: Principal,
    min_position: MinPosition,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    min_position.wait(&state, &MODELS).await?;
    let (posts, authors) = (Projection::Posts.schema(), Projection::Authors.schema());
    let tables = [
        format!("{posts}.posts"),
        format!("{posts}.comments"),
        format!("{authors}.authors"),
    ];
    let mut snapshot = consistency::snapshot(&state.pool, &tables)
        .await
        .map_err(ApiError::internal)?;
    let row: Option<PostRow> = sqlx::query_as(&format!(
        "SELECT p.id, p.title, p.body, p.status, p.author_id,
                coalesce(a.name, '') AS author_name, p.like_count, p.version
         FROM {posts}.posts p LEFT JOIN {authors}.authors a ON a.id = p.author_id
         WHERE p.id = $1"
    ))
    .bind(id.0)
    .fetch_optional(&mut *snapshot)
    .await
    .map_err(ApiError::internal)?;
    let Some(row) = row.filter(|p| p.status == "published" || p.author_id == principal.user_id)
    else {
        return Err(ApiError::NotFound("no such post".to_owned()));
    };
    let comments: Vec<CommentRow> = sqlx::query_as(&format!(
        "SELECT c.id, c.author_id, coalesce(a.name, '') AS author_name, c.body, c.created_at
         FROM {posts}.comments c LEFT JOIN {authors}.authors a ON a.id = c.author_id
         WHERE c.post_id = $1 ORDER BY c.position, c.id"
    ))
    .bind(id.0)
    .fetch_all(&mut *snapshot)
    .await
    .map_err(ApiError::internal)?;
    let etag = format!("\"{}\"", row.version);
    let post = Post {
        id: row.id,
        title: row.title,
        body: row.body,
        status: row.status,
        author: AuthorRef {
            id: row.author_id,
            name: row.author_name,
        },
        comments: comments
            .into_iter()
            .map(|c| Comment {
                id: c.id,
                author: AuthorRef {
                    id: c.author_id,
                    name: c.author_name,
                },
                body: c.body,
                created_at: c.created_at,
            })
            .collect(),
        like_count: row.like_count,
        version: row.version,
    };
    Ok(([(header::ETAG, etag)], Json(post)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_no_cursor() {
        let cursor = PageCursor {
            published_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: PostId::new(),
        };
        let text = cursor.encode();
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(PageCursor::decode(&text), Some(cursor));
        for bad in [
            "",
            "!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("12.xyz"),
        ] {
            assert_eq!(PageCursor::decode(bad), None, "{bad}");
        }
    }
}
