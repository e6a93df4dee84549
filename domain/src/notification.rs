//! Notifications: what the relay derives from events and the WebSocket hub delivers.
//!
//! An event notifies someone when a [`Trigger`] is in it (a comment or like by someone
//! else, a change of roles); the trigger, with its actor's name, becomes an [`Addressed`]
//! notification. How it travels (Redis channels, histories, offsets, frames) is the
//! `notify` crate's.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::event::Event;
use crate::ids::{CommentId, EventId, PostId, UserId};
use crate::post::PostEvent;
use crate::recorded::RecordedEvent;
use crate::user::UserEvent;
use crate::values::Role;

/// One notification, as published (the offset is added by the relay's script).
#[derive(Debug, Clone)]
pub struct Notification {
    /// Derived from the event id, so a redelivered event gives the same notification.
    pub id: Uuid,
    pub kind: &'static str,
    pub time: DateTime<Utc>,
    pub event_id: EventId,
    pub data: serde_json::Value,
}

/// Who is notified, and of what.
#[derive(Debug, Clone)]
pub struct Addressed {
    pub recipient: UserId,
    pub notification: Notification,
}

/// The namespace of notification ids (a v5 UUID of the event id).
const NAMESPACE: Uuid = Uuid::from_u128(0x6b65_656c_2d6e_6f74_6966_6963_6174_696f);

impl Notification {
    /// `{"id", "type", "time", "event_id", "data"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "id": self.id,
            "type": self.kind,
            "time": self.time,
            "event_id": self.event_id,
            "data": self.data,
        })
        .to_string()
    }

    fn of(event: &RecordedEvent, kind: &'static str, data: serde_json::Value) -> Self {
        Self {
            id: Uuid::new_v5(&NAMESPACE, event.event_id.0.as_bytes()),
            kind,
            time: event.recorded_at,
            event_id: event.event_id,
            data,
        }
    }
}

/// Who acted, as a notification shows them: the name is the one they had when the
/// event happened (`None` if they never registered a profile).
#[derive(Debug, Clone, Serialize)]
pub struct By {
    pub id: UserId,
    pub name: Option<String>,
}

/// The part of an event that decides whether it notifies anyone. `actor` is who must be
/// named (the commenter, the liker); the caller looks their name up and calls
/// [`Trigger::address`].
#[derive(Debug, Clone)]
pub enum Trigger {
    Comment {
        post_id: PostId,
        comment_id: CommentId,
        actor: UserId,
        recipient: UserId,
        body: String,
    },
    Like {
        post_id: PostId,
        actor: UserId,
        recipient: UserId,
    },
    Roles {
        recipient: UserId,
        roles: Vec<Role>,
    },
}

/// How many characters of a comment a notification quotes.
pub const EXCERPT_CHARS: usize = 140;

impl Trigger {
    /// The trigger in an event, if it notifies anyone. Nobody is notified of their own
    /// comment or like.
    pub fn of(event: &Event) -> Option<Trigger> {
        match event {
            Event::Post(PostEvent::CommentAdded(e)) if e.author_id != e.post_author_id => {
                Some(Trigger::Comment {
                    post_id: e.post_id,
                    comment_id: e.comment_id,
                    actor: e.author_id,
                    recipient: e.post_author_id,
                    body: e.body.clone(),
                })
            }
            Event::Post(PostEvent::Liked(e)) if e.user_id != e.post_author_id => {
                Some(Trigger::Like {
                    post_id: e.post_id,
                    actor: e.user_id,
                    recipient: e.post_author_id,
                })
            }
            Event::User(UserEvent::RoleChanged(e)) => Some(Trigger::Roles {
                recipient: e.id,
                roles: e.roles.clone(),
            }),
            _ => None,
        }
    }

    /// The user whose name the notification shows, if any.
    pub fn actor(&self) -> Option<UserId> {
        match self {
            Trigger::Comment { actor, .. } | Trigger::Like { actor, .. } => Some(*actor),
            Trigger::Roles { .. } => None,
        }
    }

    /// The notification, with the actor's name resolved.
    pub fn address(self, event: &RecordedEvent, actor_name: Option<String>) -> Addressed {
        let by = |id| By {
            id,
            name: actor_name.clone(),
        };
        let (recipient, kind, data) = match self {
            Trigger::Comment {
                post_id,
                comment_id,
                actor,
                recipient,
                body,
            } => (
                recipient,
                "comment.added",
                serde_json::json!({
                    "post_id": post_id,
                    "comment_id": comment_id,
                    "by": by(actor),
                    "excerpt": excerpt(&body),
                }),
            ),
            Trigger::Like {
                post_id,
                actor,
                recipient,
            } => (
                recipient,
                "post.liked",
                serde_json::json!({ "post_id": post_id, "by": by(actor) }),
            ),
            Trigger::Roles { recipient, roles } => (
                recipient,
                "user.role_changed",
                serde_json::json!({ "roles": roles }),
            ),
        };
        Addressed {
            recipient,
            notification: Notification::of(event, kind, data),
        }
    }
}

/// The start of a comment, cut at a character boundary, with `…` when cut.
fn excerpt(body: &str) -> String {
    match body.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &body[..cut]),
        None => body.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_cut_at_characters() {
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt("short"), "short");
    }
}
