//! The Redis notification protocol, in one place for both of its sides: the relay writes
//! (… -> relay -> **Redis** -> hub), the command API's WebSocket hub reads.
//!
//! The relay publishes each notification as JSON on the Redis channel
//! `notify.user.<user_id>` and appends it to that user's history, a Redis stream. Both
//! happen in one Redis script, which also assigns the notification's **offset**:
//! `<epoch>.<entry id>`, where the entry id is the history stream's (`<ms>-<seq>`, so it
//! increases per user) and the epoch names the life of the user's keys in Redis. When
//! Redis loses them (its data, or the user's keys expired) a new epoch starts, and an
//! offset of the old one is known to be unrecoverable rather than silently taken as
//! complete.
//!
//! Keys are namespaced by the JetStream stream (`keel:<stream>:notify:…`), like the UI
//! cache, so systems and tests that use different streams never share a history, and a
//! user's keys carry the user's channel as their hash tag
//! (`keel:<stream>:notify:{notify.user.<id>}:epoch|history|seen`), so that the script
//! that writes them and publishes on the channel touches one Redis Cluster slot. The
//! channel name is the contract's and is not namespaced; user ids are UUIDs.
//!
//! - [`keys`]: the user channels, the keys of one event stream, how much they keep.
//! - [`offset`]: offsets and history entry ids, and the frames that carry them.
//! - [`write`]: the relay's script: dedup, history and channel in one step.
//! - [`read`]: the hub's script: where a user's history stands and what it holds.
//!
//! What a notification says, and which events notify, is `domain::notification`'s.

pub mod keys;
pub mod offset;
pub mod read;
pub mod write;

pub use keys::{
    CHANNEL_PATTERN, HISTORY_LEN, HISTORY_TTL_SECS, Keys, SEEN_LEN, channel, channel_user,
};
pub use offset::{EntryId, InvalidOffset, Offset, RECOVERY_INCOMPLETE, frame};
pub use read::{CatchUp, Delivered, ReadError, Reader};
pub use write::Publisher;
