//! What authorization depends on, beyond the token itself: a user's roles and standing in
//! Keel, the cut-off of its revoked tokens, and the revoked `jti`s — all folded from the
//! log's *policy events* — and the Redis Pub/Sub channels that tell every command-api
//! instance to look again (`policy.invalidate.<user_id>`, `policy.invalidate.all`). The
//! projectors publish on them; the command API listens. One home for both sides.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use crate::domain::{DecodeError, Event, Role, UserEvent};
use crate::event_log::{COLUMNS, RecordedEvent};
use crate::ids::{Position, StreamId, UserId};

/// The event types that change what a token may do. The log keeps a partial index of
/// exactly these (migration 0006), so instances can tail them cheaply.
pub const EVENT_TYPES: [&str; 5] = [
    "user.registered",
    "user.role_changed",
    "user.deactivated",
    "user.tokens_revoked",
    "token.revoked",
];

/// The SQL list of [`EVENT_TYPES`], spelled as the partial index's predicate so the
/// planner can use the index (a bound array parameter would not prove the predicate).
pub const EVENT_TYPES_SQL: &str = "('user.registered', 'user.role_changed', \
     'user.deactivated', 'user.tokens_revoked', 'token.revoked')";

/// Channel prefix of the invalidations.
const CHANNEL_PREFIX: &str = "policy.invalidate.";
/// Evict every cached policy.
pub const INVALIDATE_ALL: &str = "policy.invalidate.all";
/// What an instance subscribes to.
pub const CHANNEL_PATTERN: &str = "policy.invalidate.*";

/// The channel that evicts `user`'s cached policy.
pub fn invalidate_channel(user: UserId) -> String {
    format!("{CHANNEL_PREFIX}{user}")
}

/// What an invalidation message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    User(UserId),
    All,
}

/// The invalidation a channel name asks for; `None` for any other channel (or a user id
/// that is not a canonical UUID).
pub fn invalidation(channel: &str) -> Option<Invalidation> {
    let target = channel.strip_prefix(CHANNEL_PREFIX)?;
    if target == "all" {
        return Some(Invalidation::All);
    }
    let user: UserId = target.parse().ok()?;
    (user.to_string() == target).then_some(Invalidation::User(user))
}

/// A user as authorization sees it, folded from its stream's policy events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPolicy {
    pub registered: bool,
    pub active: bool,
    /// The roles Keel records (meaningful once registered).
    pub roles: Vec<Role>,
    /// Tokens issued (`iat`) at or before this (Unix seconds) are refused.
    pub tokens_issued_up_to: Option<i64>,
}

impl UserPolicy {
    pub fn apply(&mut self, event: &UserEvent) {
        match event {
            UserEvent::Registered(e) => {
                self.registered = true;
                self.active = true;
                self.roles = e.roles.clone();
            }
            UserEvent::RoleChanged(e) => self.roles = e.roles.clone(),
            UserEvent::Deactivated(_) => self.active = false,
            UserEvent::TokensRevoked(e) => {
                self.tokens_issued_up_to = Some(
                    self.tokens_issued_up_to
                        .map_or(e.issued_up_to, |t| t.max(e.issued_up_to)),
                );
            }
            UserEvent::Updated(_) => {}
        }
    }

    /// Whether Keel grants `role` (a registered user: its recorded roles; not registered:
    /// whatever the token says, so this answers true).
    pub fn grants(&self, role: &str) -> bool {
        !self.registered || self.roles.iter().any(|r| r.as_str() == role)
    }

    /// Whether a token issued at `iat` is refused by a cut-off (a token without `iat`
    /// cannot prove it is newer than one).
    pub fn refuses_issued_at(&self, iat: Option<i64>) -> bool {
        self.tokens_issued_up_to
            .is_some_and(|cutoff| iat.is_none_or(|iat| iat <= cutoff))
    }
}

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
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events WHERE event_type IN {EVENT_TYPES_SQL} AND position > $1
         ORDER BY position LIMIT $2"
    ))
    .bind(after.0)
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// A revocation as the log recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    Token { jti: String, expires_at: i64 },
    User { user_id: UserId, issued_up_to: i64 },
}

/// A revocation and where it stands in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRevocation {
    pub revocation: Revocation,
    pub position: Position,
    pub created_at: DateTime<Utc>,
    /// The admin who revoked.
    pub revoked_by: Option<UserId>,
}

/// The revocations still in force at `now` (Unix seconds), oldest first: each revoked
/// `jti` until its expiry (plus `leeway`, as long as such a token could still pass), and
/// each user's latest cut-off.
pub async fn revocations_in_force(
    executor: impl PgExecutor<'_>,
    now: i64,
    leeway: i64,
) -> Result<Vec<RecordedRevocation>, ReadError> {
    let rows: Vec<RecordedEvent> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM events
         WHERE event_type IN ('user.tokens_revoked', 'token.revoked') ORDER BY position"
    ))
    .fetch_all(executor)
    .await?;
    let mut latest: Vec<RecordedRevocation> = Vec::new();
    for row in rows {
        let revocation = match row.decode()? {
            Event::Token(crate::domain::TokenEvent::Revoked(e)) => Revocation::Token {
                jti: e.jti,
                expires_at: e.expires_at,
            },
            Event::User(UserEvent::TokensRevoked(e)) => Revocation::User {
                user_id: e.id,
                issued_up_to: e.issued_up_to,
            },
            _ => continue,
        };
        let same = |r: &RecordedRevocation| match (&r.revocation, &revocation) {
            (Revocation::Token { jti: a, .. }, Revocation::Token { jti: b, .. }) => a == b,
            (Revocation::User { user_id: a, .. }, Revocation::User { user_id: b, .. }) => a == b,
            _ => false,
        };
        latest.retain(|r| !same(r));
        latest.push(RecordedRevocation {
            revocation,
            position: row.position,
            created_at: row.recorded_at,
            revoked_by: row.metadata.actor_id,
        });
    }
    latest.retain(|r| match r.revocation {
        Revocation::Token { expires_at, .. } => expires_at + leeway > now,
        Revocation::User { .. } => true,
    });
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::user::{
        UserDeactivated, UserRegistered, UserRoleChanged, UserTokensRevoked,
    };

    #[test]
    fn channels_name_one_user_or_all() {
        let user = UserId::new();
        assert_eq!(
            invalidation(&invalidate_channel(user)),
            Some(Invalidation::User(user))
        );
        assert_eq!(invalidation(INVALIDATE_ALL), Some(Invalidation::All));
        for other in [
            "policy.invalidate.",
            "policy.invalidate.nobody",
            "notify.user.0190c2a0-0000-7000-8000-000000000000",
            "policy.invalidate.0190C2A0-0000-7000-8000-000000000000",
        ] {
            assert_eq!(invalidation(other), None, "{other}");
        }
    }

    #[test]
    fn the_fold_follows_roles_standing_and_the_latest_cutoff() {
        let id = UserId::new();
        let mut policy = UserPolicy::default();
        assert!(policy.grants("admin"), "not registered: the token decides");
        for event in [
            UserEvent::TokensRevoked(UserTokensRevoked {
                id,
                issued_up_to: 200,
            }),
            UserEvent::Registered(UserRegistered {
                id,
                email: "a@pii.test".into(),
                name: "A".into(),
                roles: vec![Role::Admin, Role::User],
            }),
            UserEvent::TokensRevoked(UserTokensRevoked {
                id,
                issued_up_to: 100,
            }),
            UserEvent::RoleChanged(UserRoleChanged {
                id,
                roles: vec![Role::User],
                previous_roles: vec![Role::Admin, Role::User],
            }),
        ] {
            policy.apply(&event);
        }
        assert!(policy.grants("user") && !policy.grants("admin"));
        assert!(policy.refuses_issued_at(Some(200)) && policy.refuses_issued_at(None));
        assert!(!policy.refuses_issued_at(Some(201)));
        policy.apply(&UserEvent::Deactivated(UserDeactivated { id }));
        assert!(!policy.active);
    }
}
