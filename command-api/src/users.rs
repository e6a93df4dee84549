//! The Users endpoints: register, profile, roles, deactivation, and reading a user from
//! the `users` read model.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;

use crate::auth::{self, Principal};
use crate::body::JsonBody;
use crate::commands::{Answer, CommandContext};
use crate::consistency::MinPosition;
use crate::error::ApiError;
use crate::state::AppState;
use crate::validation::{Fields, PathText, parse_id};
use domain::ids::{UserId, Version};
use domain::{Command, Email, Name, Role, UserCommand};
use events::read_model::Projection;

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
    // A user registering itself records the roles its token grants among Keel's; an
    // admin registering someone else grants nothing of its own.
    let roles = if id == context.principal.user_id {
        context
            .principal
            .roles
            .iter()
            .filter_map(|r| Role::from_name(r))
            .collect()
    } else {
        vec![]
    };
    let command = Command::User {
        id,
        command: UserCommand::Register { email, name, roles },
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
    PathText(id): PathText,
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
    PathText(id): PathText,
    context: CommandContext,
    body: JsonBody<RolesBody>,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    auth::ensure_active(&state, &context.principal).await?;
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
    PathText(id): PathText,
    context: CommandContext,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    if id != context.principal.user_id {
        auth::ensure_active(&state, &context.principal).await?;
    }
    let command = Command::User {
        id,
        command: UserCommand::Deactivate,
    };
    context.execute(&state, &[], command, Answer::ok()).await
}

/// A user as the queries show it (`GET /api/users/{id}`, `/internal/users/{id}`, and the
/// dashboard's `user`).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct UserView {
    #[sqlx(try_from = "uuid::Uuid")]
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub roles: Vec<String>,
    pub active: bool,
    #[sqlx(try_from = "i64")]
    pub version: Version,
}

impl UserView {
    /// The user from the `users` table of `schema` (`rm_users` or `rm_dashboard`).
    pub async fn find(
        executor: impl PgExecutor<'_>,
        schema: &str,
        id: UserId,
    ) -> Result<Option<Self>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT id, email, name, roles, active, version FROM {schema}.users WHERE id = $1"
        ))
        .bind(id.0)
        .fetch_optional(executor)
        .await
    }
}

/// The JSON body, with `ETag: "<version>"`.
impl IntoResponse for UserView {
    fn into_response(self) -> Response {
        let etag = format!("\"{}\"", self.version);
        ([(header::ETAG, etag)], Json(self)).into_response()
    }
}

/// `GET /api/users/{id}`: self or admin, from the `users` read model.
async fn get_user(
    State(state): State<AppState>,
    PathText(id): PathText,
    principal: Principal,
    min_position: MinPosition,
) -> Result<Response, ApiError> {
    let id: UserId = parse_id(&id, "user")?;
    if principal.user_id != id && !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "you may only read your own profile".to_owned(),
        ));
    }
    read_user(&state, id, min_position).await
}

/// The user from the `users` read model, once it has applied `min_position`; 404 when it
/// has no such user. Served to the user (`/api`) and to services (`/internal`).
pub async fn read_user(
    state: &AppState,
    id: UserId,
    min_position: MinPosition,
) -> Result<Response, ApiError> {
    min_position.wait(state, &[Projection::Users]).await?;
    UserView::find(&state.pool, Projection::Users.schema(), id)
        .await
        .map_err(ApiError::internal)?
        .map(IntoResponse::into_response)
        .ok_or_else(|| ApiError::NotFound("no such user".to_owned()))
}
