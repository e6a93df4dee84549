//! The Users endpoints: register, profile, roles, deactivation, and reading a user.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::auth::Principal;
use crate::body::JsonBody;
use crate::commands::{Answer, CommandContext};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validation::{Fields, parse_id};
use events::domain::{Command, Email, Name, Role, State as AggregateState, UserCommand};
use events::event_log;
use events::ids::{StreamId, UserId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", post(register))
        .route(
            "/api/users/{id}",
            axum::routing::get(get_user)
                .patch(update)
                .delete(deactivate),
        )
        .route("/api/users/{id}/roles", put(change_roles))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    email: String,
    name: String,
    /// Only an admin may register someone else.
    #[serde(default)]
    id: Option<UserId>,
}

async fn register(
    State(state): State<AppState>,
    context: CommandContext,
    body: JsonBody<RegisterBody>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    let email = fields.check("email", Email::parse(&body.value.email));
    let name = fields.check("name", Name::parse(&body.value.name));
    let (Some(email), Some(name)) = (email, name) else {
        return Err(fields.into_error());
    };
    let id = body.value.id.unwrap_or(context.principal.user_id);
    let command = Command::User {
        id,
        command: UserCommand::Register { email, name },
    };
    let answer = Answer::created(format!("/api/users/{id}"));
    context.execute(&state, &body.raw, command, answer).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    context: CommandContext,
    body: JsonBody<UpdateBody>,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    let mut fields = Fields::default();
    let email = fields.check_optional("email", body.value.email.as_deref(), Email::parse);
    let name = fields.check_optional("name", body.value.name.as_deref(), Name::parse);
    fields.ok()?;
    let command = Command::User {
        id,
        command: UserCommand::Update { email, name },
    };
    context
        .execute(&state, &body.raw, command, Answer::ok())
        .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesBody {
    roles: Vec<Role>,
}

async fn change_roles(
    State(state): State<AppState>,
    Path(id): Path<String>,
    context: CommandContext,
    body: JsonBody<RolesBody>,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    if body.value.roles.is_empty() {
        let mut fields = Fields::default();
        fields.add("roles", "must name at least one role");
        return Err(fields.into_error());
    }
    let command = Command::User {
        id,
        command: UserCommand::ChangeRoles {
            roles: body.value.roles.clone(),
        },
    };
    context
        .execute(&state, &body.raw, command, Answer::ok())
        .await
}

async fn deactivate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    context: CommandContext,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    let command = Command::User {
        id,
        command: UserCommand::Deactivate,
    };
    context.execute(&state, &[], command, Answer::ok()).await
}

/// Reads the user's stream directly (until the `users` read model exists).
async fn get_user(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Principal,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    if principal.user_id != id && !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "you may only read your own profile".to_owned(),
        ));
    }
    let stream = StreamId::user(id);
    let history = event_log::read_stream(&state.pool, &stream, Default::default(), i64::MAX)
        .await
        .map_err(ApiError::internal)?;
    let mut aggregate = AggregateState::initial(&stream);
    for recorded in &history {
        aggregate.apply(&recorded.decode().map_err(ApiError::internal)?);
    }
    let (AggregateState::User(Some(user)), Some(last)) = (aggregate, history.last()) else {
        return Err(ApiError::NotFound("no such user".to_owned()));
    };
    let body = serde_json::json!({
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "roles": user.roles,
        "active": user.active,
        "version": last.version,
    });
    let etag = format!("\"{}\"", last.version);
    Ok(([(axum::http::header::ETAG, etag)], Json(body)).into_response())
}
