//! The internal API for other services: `GET /internal/users/{id}`, authenticated by a
//! service key (`X-Api-Key` or `X-Service-Token`), never by a user's token. Served on
//! the internal listener only.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;

use crate::auth::service_key::ServiceCaller;
use crate::consistency::MinPosition;
use crate::error::ApiError;
use crate::state::AppState;
use crate::users;
use crate::validation::{PathText, parse_id};
use domain::ids::UserId;

pub fn router() -> Router<AppState> {
    Router::new().route("/internal/users/{id}", get(get_user))
}

/// Any user, from the `users` read model.
async fn get_user(
    State(state): State<AppState>,
    _caller: ServiceCaller,
    PathText(id): PathText,
    min_position: MinPosition,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    users::read_user(&state, id, min_position).await
}
