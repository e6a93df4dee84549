//! The Blog's authors: `GET /api/authors/{id}` from the `authors` read model (kept from
//! `user.*` events; the Blog never asks Users).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::auth::Principal;
use crate::consistency::MinPosition;
use crate::error::ApiError;
use crate::state::AppState;
use crate::validation::{PathText, parse_id};
use domain::ids::UserId;
use events::read_model::Projection;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/authors/{id}", get(get_author))
}

#[derive(Serialize, sqlx::FromRow)]
struct Author {
    #[sqlx(try_from = "uuid::Uuid")]
    id: UserId,
    name: String,
    active: bool,
    post_count: i32,
}

/// Anyone authenticated.
async fn get_author(
    State(state): State<AppState>,
    _principal: Principal,
    PathText(id): PathText,
    min_position: MinPosition,
) -> Result<Json<Author>, ApiError> {
    let id: UserId = parse_id(&id, "author")?;
    min_position.wait(&state, &[Projection::Authors]).await?;
    let author: Option<Author> = sqlx::query_as(&format!(
        "SELECT id, name, active, post_count FROM {}.authors WHERE id = $1",
        Projection::Authors.schema()
    ))
    .bind(id.0)
    .fetch_optional(&state.pool)
    .await
    .map_err(ApiError::internal)?;
    author
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no such author".to_owned()))
}
