//! `POST /api/admin/revocations` and `GET /api/admin/revocations`: an admin refuses a
//! token by its `jti` (until its expiry), or every token of a user issued up to now.
//! Each revocation is an event in the log (`token.revoked`, `user.tokens_revoked`), so it
//! is durable, audited, on the bus, and enforced by every instance (see
//! [`crate::policy`]).

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{self, LEEWAY_SECS, Principal};
use crate::body::JsonBody;
use crate::commands::{Answer, CommandContext};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validation::Fields;
use domain::ids::{Position, TokenId, UserId};
use domain::{Command, Jti, TokenCommand, UserCommand};
use events::policy::{self, Revocation};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/revocations", post(revoke).get(list))
}

/// `{"jti", "expires_at"}` or `{"user_id"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    user_id: Option<UserId>,
}

/// What is revoked, checked.
enum Target {
    Token { jti: Jti, expires_at: i64 },
    User(UserId),
}

impl RevokeBody {
    fn target(&self, now: i64) -> Result<Target, ApiError> {
        let mut fields = Fields::default();
        match (&self.jti, self.expires_at, self.user_id) {
            (Some(jti), expires_at, None) => {
                let jti = fields.check("jti", Jti::parse(jti));
                let expires_at = match expires_at {
                    None => {
                        fields.add("expires_at", "is required with jti (the token's exp)");
                        None
                    }
                    Some(at) if at + LEEWAY_SECS as i64 <= now => {
                        fields.add("expires_at", "the token has expired already");
                        None
                    }
                    Some(at) => Some(at),
                };
                match (jti, expires_at) {
                    (Some(jti), Some(expires_at)) => Ok(Target::Token { jti, expires_at }),
                    _ => Err(fields.into_error()),
                }
            }
            (None, None, Some(user)) => Ok(Target::User(user)),
            (None, Some(_), Some(_)) => {
                fields.add("expires_at", "goes with jti, not with user_id");
                Err(fields.into_error())
            }
            (Some(_), _, Some(_)) => {
                fields.add(
                    "$",
                    "name either jti (with expires_at) or user_id, not both",
                );
                Err(fields.into_error())
            }
            (None, _, None) => {
                fields.add("$", "name jti (with expires_at) or user_id");
                Err(fields.into_error())
            }
        }
    }
}

/// `POST /api/admin/revocations` (admin; a sensitive operation).
async fn revoke(
    State(state): State<AppState>,
    context: CommandContext,
    body: JsonBody<RevokeBody>,
) -> Result<Response, ApiError> {
    context.principal.require_admin("revoking tokens")?;
    auth::ensure_active(&state, &context.principal).await?;
    let now = auth::now();
    let (command, extra) = match body.value.target(now)? {
        Target::Token { jti, expires_at } => (
            Command::Token {
                id: TokenId::of_jti(jti.as_str()),
                command: TokenCommand::Revoke {
                    jti: jti.clone(),
                    expires_at,
                },
            },
            vec![
                ("jti", json!(jti.as_str())),
                ("expires_at", json!(expires_at)),
            ],
        ),
        Target::User(user) => (
            Command::User {
                id: user,
                command: UserCommand::RevokeTokens { issued_up_to: now },
            },
            vec![("user_id", json!(user)), ("issued_up_to", json!(now))],
        ),
    };
    let answer = Answer {
        extra,
        stamped: true,
        ..Answer::created("/api/admin/revocations".to_owned())
    };
    context.execute(&state, &body.raw, command, answer).await
}

/// One revocation in force, as listed.
#[derive(Serialize)]
struct Listed {
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_up_to: Option<i64>,
    created_at: chrono::DateTime<chrono::Utc>,
    position: Position,
    revoked_by: Option<UserId>,
}

/// `GET /api/admin/revocations` (admin): those still in force, oldest first, read from
/// the log (so a revocation is listed as soon as its 201 was sent).
async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<serde_json::Value>, ApiError> {
    principal.require_admin("listing revocations")?;
    let revocations = policy::revocations_in_force(&state.pool, auth::now(), LEEWAY_SECS as i64)
        .await
        .map_err(ApiError::internal)?;
    let items: Vec<Listed> = revocations
        .into_iter()
        .map(|r| {
            let (jti, expires_at, user_id, issued_up_to) = match r.revocation {
                Revocation::Token { jti, expires_at } => (Some(jti), Some(expires_at), None, None),
                Revocation::User {
                    user_id,
                    issued_up_to,
                } => (None, None, Some(user_id), Some(issued_up_to)),
            };
            Listed {
                jti,
                expires_at,
                user_id,
                issued_up_to,
                created_at: r.created_at,
                position: r.position,
                revoked_by: r.revoked_by,
            }
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
