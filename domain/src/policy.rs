//! What authorization depends on, beyond the token itself: a user's roles and standing in
//! Keel, the cut-off of its revoked tokens, and the revoked `jti`s — all folded from the
//! log's *policy events* — and the Redis Pub/Sub channels that tell every command-api
//! instance to look again (`policy.invalidate.<user_id>`, `policy.invalidate.all`). The
//! projectors publish on them; the command API listens. One home for both sides.

use chrono::{DateTime, Utc};

use crate::event::{DecodeError, Event};
use crate::ids::{Position, UserId};
use crate::recorded::RecordedEvent;
use crate::token::TokenEvent;
use crate::user::UserEvent;
use crate::values::Role;

/// The event types that change what a token may do. The log keeps a partial index of
/// exactly these (migration 0006), so instances can tail them cheaply.
pub const EVENT_TYPES: [&str; 5] = [
    "user.registered",
    "user.role_changed",
    "user.deactivated",
    "user.tokens_revoked",
    "token.revoked",
];

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

/// The revocations still in force at `now` (Unix seconds) among `events` (in position
/// order; other events are skipped), oldest first: each revoked `jti` until its expiry
/// (plus `leeway`, as long as such a token could still pass), and each user's latest
/// cut-off.
pub fn fold_revocations(
    events: impl IntoIterator<Item = RecordedEvent>,
    now: i64,
    leeway: i64,
) -> Result<Vec<RecordedRevocation>, DecodeError> {
    let mut latest: Vec<RecordedRevocation> = Vec::new();
    for event in events {
        let revocation = match event.decode()? {
            Event::Token(TokenEvent::Revoked(e)) => Revocation::Token {
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
            position: event.position,
            created_at: event.recorded_at,
            revoked_by: event.metadata.actor_id,
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
    use crate::ids::{EventId, StreamId, Version};
    use crate::recorded::Metadata;
    use crate::token::TokenRevoked;
    use crate::user::{UserDeactivated, UserRegistered, UserRoleChanged, UserTokensRevoked};

    fn recorded(position: i64, event: Event) -> RecordedEvent {
        RecordedEvent {
            position: Position(position),
            event_id: EventId::new(),
            stream_id: StreamId::user(UserId::new()),
            version: Version(1),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            data: event.data(),
            metadata: Metadata::default(),
            recorded_at: Utc::now(),
        }
    }

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

    #[test]
    fn revocations_in_force_are_the_latest_per_jti_and_user_until_expiry() {
        let user = UserId::new();
        let token = |jti: &str, expires_at| {
            Event::Token(TokenEvent::Revoked(TokenRevoked {
                jti: jti.to_owned(),
                expires_at,
            }))
        };
        let cutoff = |issued_up_to| {
            Event::User(UserEvent::TokensRevoked(UserTokensRevoked {
                id: user,
                issued_up_to,
            }))
        };
        let events = vec![
            recorded(1, token("a", 1000)),
            recorded(2, cutoff(10)),
            recorded(3, token("b", 50)),
            recorded(4, cutoff(20)),
            recorded(5, token("a", 2000)),
        ];
        let in_force = fold_revocations(events, 100, 30).unwrap();
        let found: Vec<_> = in_force
            .into_iter()
            .map(|r| (r.position.0, r.revocation))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    4,
                    Revocation::User {
                        user_id: user,
                        issued_up_to: 20
                    }
                ),
                (
                    5,
                    Revocation::Token {
                        jti: "a".to_owned(),
                        expires_at: 2000
                    }
                ),
            ]
        );
    }
}
