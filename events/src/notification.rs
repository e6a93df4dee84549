//! Notifications on Redis: how what the relay derives from events (`domain::notification`,
//! re-exported here) reaches the WebSocket hub.
//!
//! The relay publishes each notification as JSON on the Redis channel
//! `notify.user.<user_id>` and appends it to that user's history, a Redis stream. Both
//! happen in one Redis script, which also assigns the notification's **offset**:
//! `<epoch>.<entry id>`, where the entry id is the history stream's (`<ms>-<seq>`, so it
//! increases per user) and the epoch names the life of the Redis data set. When Redis
//! loses its data a new epoch starts, and an offset of the old one is known to be
//! unrecoverable rather than silently taken as complete.
//!
//! Keys are namespaced by the JetStream stream (`keel:<stream>:notify:…`), like the UI
//! cache, so systems and tests that use different streams never share a history. The
//! channel name is the contract's and is not namespaced; user ids are UUIDs.

use std::fmt;

use domain::ids::UserId;
pub use domain::notification::{Addressed, By, EXCERPT_CHARS, Notification, Trigger};
use uuid::Uuid;

/// Every user channel, as one pattern subscription.
pub const CHANNEL_PATTERN: &str = "notify.user.*";
const CHANNEL_PREFIX: &str = "notify.user.";

/// How many notifications a user's history keeps (the contract asks for at least 100;
/// PROMISES P11 has a client miss 500 while away).
pub const HISTORY_LEN: usize = 1000;

/// A user's history (and dedup memory) is dropped after this long without a
/// notification; a client resuming after that gets `recovery.incomplete`.
pub const HISTORY_TTL_SECS: u64 = 30 * 24 * 3600;

/// How many of a user's latest notification ids are remembered to drop a redelivery.
pub const SEEN_LEN: usize = 1000;

/// The frame a socket receives first when its history no longer covers the offset it
/// asked to resume from.
pub const RECOVERY_INCOMPLETE: &str = r#"{"type":"recovery.incomplete"}"#;

/// The channel a user's notifications are published on.
pub fn channel(user: UserId) -> String {
    format!("{CHANNEL_PREFIX}{user}")
}

/// The user a channel belongs to, if it is a user channel.
pub fn channel_user(channel: &str) -> Option<UserId> {
    channel.strip_prefix(CHANNEL_PREFIX)?.parse().ok()
}

/// The Redis keys of the notifications of one event stream.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn of(stream: &str) -> Self {
        Self {
            prefix: format!("keel:{stream}:notify:"),
        }
    }

    /// The current epoch (see the module documentation).
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// The user's history: a Redis stream of `n` → notification JSON (without offset).
    pub fn history(&self, user: UserId) -> String {
        format!("{}history:{user}", self.prefix)
    }

    /// The ids of the user's latest notifications, scored by event position.
    pub fn seen(&self, user: UserId) -> String {
        format!("{}seen:{user}", self.prefix)
    }
}

/// A fresh epoch name: 12 lowercase hex digits.
pub fn new_epoch() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A history entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl std::str::FromStr for EntryId {
    type Err = InvalidOffset;
    fn from_str(s: &str) -> Result<Self, InvalidOffset> {
        let (ms, seq) = s.split_once('-').ok_or(InvalidOffset)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| InvalidOffset)?,
            seq: seq.parse().map_err(|_| InvalidOffset)?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where a user's notifications stand: `<epoch>.<entry id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub epoch: String,
    pub entry: EntryId,
}

/// A string that is not an offset Keel issued.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("not a notification offset")]
pub struct InvalidOffset;

impl std::str::FromStr for Offset {
    type Err = InvalidOffset;
    fn from_str(s: &str) -> Result<Self, InvalidOffset> {
        let (epoch, entry) = s.split_once('.').ok_or(InvalidOffset)?;
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(InvalidOffset);
        }
        Ok(Self {
            epoch: epoch.to_owned(),
            entry: entry.parse()?,
        })
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.entry)
    }
}

/// The frame a socket receives: the notification's JSON with `"offset"` put first.
/// The relay's script builds the published message the same way.
pub fn frame(notification_json: &str, offset: &Offset) -> String {
    let rest = notification_json
        .strip_prefix('{')
        .unwrap_or(notification_json);
    format!(r#"{{"offset":"{offset}",{rest}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_refuse_what_keel_did_not_issue() {
        let offset: Offset = "a1b2c3.1700000000000-7".parse().expect("an offset");
        assert_eq!(offset.epoch, "a1b2c3");
        assert_eq!(
            offset.entry,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 7
            }
        );
        assert_eq!(offset.to_string(), "a1b2c3.1700000000000-7");
        for bad in [
            "", "a1", ".1-2", "a.1", "a.1-", "a.-1", "a-b.1-2", "a.1-2-3", "a.x-1",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        let parse = |s: &str| s.parse::<EntryId>().expect("an entry id");
        assert!(parse("10-0") < parse("10-1"));
        assert!(parse("9-99") < parse("10-0"));
    }

    #[test]
    fn frames_put_the_offset_first() {
        let offset: Offset = "e.1-0".parse().expect("an offset");
        let frame = frame(r#"{"id":"x","data":{}}"#, &offset);
        assert_eq!(frame, r#"{"offset":"e.1-0","id":"x","data":{}}"#);
        let value: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(value["offset"], "e.1-0");
    }

    #[test]
    fn channels_name_their_user() {
        let user = UserId::new();
        assert_eq!(channel_user(&channel(user)), Some(user));
        assert_eq!(channel_user("notify.user.not-a-uuid"), None);
        assert_eq!(channel_user("other"), None);
    }
}
