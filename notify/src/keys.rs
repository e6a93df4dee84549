//! Where notifications live in Redis: the user channels, the keys of one event stream,
//! and how much (and how long) they keep.

use domain::ids::UserId;

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

/// The channel a user's notifications are published on.
pub fn channel(user: UserId) -> String {
    format!("{CHANNEL_PREFIX}{user}")
}

/// The user a channel belongs to, if it is a user channel.
pub fn channel_user(channel: &str) -> Option<UserId> {
    channel.strip_prefix(CHANNEL_PREFIX)?.parse().ok()
}

/// The Redis keys of the notifications of one event stream. A user's keys carry the
/// user's channel name as their hash tag (`keel:<stream>:notify:{notify.user.<id>}:…`),
/// so that on a Redis Cluster they and the channel live in one slot, as a script that
/// touches them and publishes on the channel requires.
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

    fn of_user(&self, user: UserId, what: &str) -> String {
        format!("{}{{{}}}:{what}", self.prefix, channel(user))
    }

    /// The user's current epoch (see the crate documentation).
    pub fn epoch(&self, user: UserId) -> String {
        self.of_user(user, "epoch")
    }

    /// The user's history: a Redis stream of `n` → notification JSON (without offset).
    pub fn history(&self, user: UserId) -> String {
        self.of_user(user, "history")
    }

    /// The ids of the user's latest notifications, scored by event position.
    pub fn seen(&self, user: UserId) -> String {
        self.of_user(user, "seen")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_keys_hash_with_the_users_channel() {
        let (keys, user) = (Keys::of("EVENTS"), UserId::new());
        let tag = format!("{{{}}}", channel(user));
        for key in [keys.epoch(user), keys.history(user), keys.seen(user)] {
            assert!(key.starts_with("keel:EVENTS:notify:"), "{key}");
            // Redis Cluster hashes only the first `{…}` of a key: the channel's name.
            assert_eq!(key.find('{'), key.find(&tag), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
    }

    #[test]
    fn channels_name_their_user() {
        let user = UserId::new();
        assert_eq!(channel_user(&channel(user)), Some(user));
        assert_eq!(channel_user("notify.user.not-a-uuid"), None);
        assert_eq!(channel_user("other"), None);
    }
}
