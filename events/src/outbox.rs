//! The outbox view of the log: the publisher's checkpoint and operators' republish
//! requests. The events themselves are read with [`crate::event_log::read_all`], which
//! never skips a committed event, so the log needs no separate outbox rows.

use sqlx::PgExecutor;

use domain::ids::Position;

/// The channel Postgres notifies after every append (a wake-up hint only).
pub const APPENDED_CHANNEL: &str = "keel_appended";

/// The last position the publisher saw acknowledged by JetStream.
pub async fn checkpoint(executor: impl PgExecutor<'_>) -> Result<Position, sqlx::Error> {
    sqlx::query_scalar("SELECT position FROM outbox_checkpoint")
        .fetch_one(executor)
        .await
        .map(Position)
}

/// Records published progress. Never moves backwards (a republish request does that).
pub async fn advance(executor: impl PgExecutor<'_>, to: Position) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE outbox_checkpoint SET position = greatest(position, $1), updated_at = now()",
    )
    .bind(to.0)
    .execute(executor)
    .await
    .map(drop)
}

/// Sets the checkpoint to what the stream really holds (the publisher's resume).
pub async fn rewind(executor: impl PgExecutor<'_>, to: Position) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox_checkpoint SET position = $1, updated_at = now()")
        .bind(to.0)
        .execute(executor)
        .await
        .map(drop)
}

/// Asks the active publisher to publish the log again from `from` (inclusive).
pub async fn request_republish(
    executor: impl PgExecutor<'_>,
    from: Position,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE outbox_checkpoint SET republish_from = $1, updated_at = now()")
        .bind(from.0.max(1))
        .execute(executor)
        .await
        .map(drop)
}

/// Takes a pending republish request: the checkpoint moves to just before it.
pub async fn take_republish_request(
    executor: impl PgExecutor<'_>,
) -> Result<Option<Position>, sqlx::Error> {
    let from: Option<i64> = sqlx::query_scalar(
        "WITH request AS (
             SELECT republish_from FROM outbox_checkpoint
             WHERE republish_from IS NOT NULL FOR UPDATE
         )
         UPDATE outbox_checkpoint o
         SET position = request.republish_from - 1, republish_from = NULL, updated_at = now()
         FROM request
         RETURNING request.republish_from",
    )
    .fetch_optional(executor)
    .await?;
    Ok(from.map(Position))
}
