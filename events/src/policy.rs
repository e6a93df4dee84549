//! The log's side of authorization: a user's policy, the policy events after a position,
//! and the revocations in force, read from Postgres and folded by `domain::policy`.

use sqlx::PgExecutor;

use domain::Event;
use domain::event::DecodeError;
use domain::ids::{Position, StreamId, UserId};
pub use domain::policy::{
    CHANNEL_PATTERN, EVENT_TYPES, INVALIDATE_ALL, Invalidation, RecordedRevocation, Revocation,
    UserPolicy, invalidate_channel, invalidation,
};

use domain::recorded::RecordedEvent;

use crate::event_log::{COLUMNS, EventRow, recorded};

/// The SQL list of [`EVENT_TYPES`], spelled as the partial index's predicate so the
/// planner can use the index (a bound array parameter would not prove the predicate).
pub const EVENT_TYPES_SQL: &str = "('user.registered', 'user.role_changed', \
     'user.deactivated', 'user.tokens_revoked', 'token.revoked')";

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading policy events failed")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
}

/// `user`'s policy as of the log's head, and that head (one snapshot: the policy is
/// exactly the fold of the user's policy events at or below it).
pub async fn load_user(
    executor: impl PgExecutor<'_>,
    user: UserId,
) -> Result<(Position, UserPolicy), ReadError> {
    let rows: Vec<(i64, Option<String>, Option<serde_json::Value>)> = sqlx::query_as(&format!(
        "SELECT h.head, e.event_type, e.data
         FROM (SELECT coalesce(max(position), 0) AS head FROM events) h
         LEFT JOIN events e ON e.stream_id = $1 AND e.event_type IN {EVENT_TYPES_SQL}
         ORDER BY e.version"
    ))
    .bind(StreamId::user(user).to_string())
    .fetch_all(executor)
    .await?;
    let mut policy = UserPolicy::default();
    let mut head = Position(0);
    for (at, event_type, data) in rows {
        head = Position(at);
        if let (Some(event_type), Some(data)) = (event_type, data)
            && let Event::User(event) = Event::decode(&event_type, &data)?
        {
            policy.apply(&event);
        }
    }
    Ok((head, policy))
}

/// The policy events after `after`, in position order, at most `limit`.
pub async fn events_after(
    executor: impl PgExecutor<'_>,
    after: Position,
    limit: i64,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {COLUMNS} FROM events WHERE event_type IN {EVENT_TYPES_SQL} AND position > $1
         ORDER BY position LIMIT $2"
    ))
    .bind(after.0)
    .bind(limit)
    .fetch_all(executor)
    .await
    .map(recorded)
}

/// The revocations still in force at `now` (Unix seconds), oldest first: each revoked
/// `jti` until its expiry (plus `leeway`, as long as such a token could still pass), and
/// each user's latest cut-off.
pub async fn revocations_in_force(
    executor: impl PgExecutor<'_>,
    now: i64,
    leeway: i64,
) -> Result<Vec<RecordedRevocation>, ReadError> {
    let rows = sqlx::query_as::<_, EventRow>(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE event_type IN ('user.tokens_revoked', 'token.revoked') ORDER BY position"
    ))
    .fetch_all(executor)
    .await?;
    Ok(domain::policy::fold_revocations(
        recorded(rows),
        now,
        leeway,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_list_spells_every_policy_event_type() {
        let spelled: Vec<String> = EVENT_TYPES.iter().map(|t| format!("'{t}'")).collect();
        assert_eq!(EVENT_TYPES_SQL, format!("({})", spelled.join(", ")));
    }
}
