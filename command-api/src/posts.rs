//! The Blog endpoints: posts, publishing, comments and likes.

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{patch, post, put};
use serde::Deserialize;

use crate::body::JsonBody;
use crate::commands::{Answer, CommandContext};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validation::{Fields, PathText, parse_id};
use domain::ids::{CommentId, PostId};
use domain::{Command, CommentBody, PostBody, PostCommand, Title};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/posts", post(create))
        .route("/api/posts/{id}", patch(update).delete(delete))
        .route("/api/posts/{id}/publish", post(publish))
        .route("/api/posts/{id}/comments", post(comment))
        .route("/api/posts/{id}/like", put(like).delete(unlike))
}

fn on_post(id: PostId, command: PostCommand) -> Command {
    Command::Post { id, command }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    title: String,
    body: String,
}

async fn create(
    State(state): State<AppState>,
    context: CommandContext,
    body: JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let mut fields = Fields::default();
    let title = fields.check("title", Title::parse(&body.value.title));
    let text = fields.check("body", PostBody::parse(&body.value.body));
    let (Some(title), Some(text)) = (title, text) else {
        return Err(fields.into_error());
    };
    let id = PostId::new();
    let command = on_post(id, PostCommand::Create { title, body: text });
    let answer = Answer::created(format!("/api/posts/{id}"));
    context.execute(&state, &body.raw, command, answer).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

async fn update(
    State(state): State<AppState>,
    PathText(id): PathText,
    context: CommandContext,
    body: JsonBody<UpdateBody>,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    let mut fields = Fields::default();
    let title = fields.check_optional("title", body.value.title.as_deref(), Title::parse);
    let text = fields.check_optional("body", body.value.body.as_deref(), PostBody::parse);
    fields.ok()?;
    let command = on_post(id, PostCommand::Update { title, body: text });
    context
        .execute(&state, &body.raw, command, Answer::ok())
        .await
}

async fn publish(
    State(state): State<AppState>,
    PathText(id): PathText,
    context: CommandContext,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    let command = on_post(id, PostCommand::Publish);
    context.execute(&state, &[], command, Answer::ok()).await
}

async fn delete(
    State(state): State<AppState>,
    PathText(id): PathText,
    context: CommandContext,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    let command = on_post(id, PostCommand::Delete);
    context.execute(&state, &[], command, Answer::ok()).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommentBodyJson {
    body: String,
}

async fn comment(
    State(state): State<AppState>,
    PathText(id): PathText,
    context: CommandContext,
    body: JsonBody<CommentBodyJson>,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    let mut fields = Fields::default();
    let Some(text) = fields.check("body", CommentBody::parse(&body.value.body)) else {
        return Err(fields.into_error());
    };
    let comment_id = CommentId::new();
    let command = on_post(
        id,
        PostCommand::AddComment {
            comment_id,
            body: text,
        },
    );
    let answer = Answer {
        extra: vec![("comment_id", serde_json::json!(comment_id))],
        ..Answer::created(format!("/api/posts/{id}"))
    };
    context.execute(&state, &body.raw, command, answer).await
}

async fn like(
    State(state): State<AppState>,
    PathText(id): PathText,
    context: CommandContext,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    let command = on_post(id, PostCommand::Like);
    context.execute(&state, &[], command, Answer::ok()).await
}

async fn unlike(
    State(state): State<AppState>,
    PathText(id): PathText,
    context: CommandContext,
) -> Result<Response, ApiError> {
    let id: PostId = parse_id(&id, "post")?;
    let command = on_post(id, PostCommand::Unlike);
    context.execute(&state, &[], command, Answer::ok()).await
}
