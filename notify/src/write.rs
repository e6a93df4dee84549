//! The relay's side: publishing one notification, with dedup, history and channel in one
//! atomic Redis script.
//!
//! The script remembers the notification's id (a redelivered event gives the same id, and
//! is dropped here), appends the notification to the user's history (trimmed to
//! [`HISTORY_LEN`] by `XDEL`, so Redis records the newest entry it removed and the hub
//! can tell a complete recovery from an incomplete one; both keys expire after
//! [`HISTORY_TTL_SECS`] without news), and publishes it on the user's
//! channel with its offset first. Because all of it is one script, a crash leaves either
//! nothing or everything, and live delivery and history can never disagree on order.

use domain::ids::Position;
use domain::notification::Addressed;
use redis::aio::ConnectionLike;
use uuid::Uuid;

use crate::keys::{HISTORY_LEN, HISTORY_TTL_SECS, Keys, SEEN_LEN, channel};
use crate::offset::Offset;

const SCRIPT: &str = r#"
local epoch = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'GET')
if not epoch then epoch = ARGV[1] end
if redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2]) == 0 then return false end
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[7]) - 1)
local id = redis.call('XADD', KEYS[2], '*', 'n', ARGV[4])
local excess = redis.call('XLEN', KEYS[2]) - tonumber(ARGV[6])
if excess > 0 then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', excess)) do
    redis.call('XDEL', KEYS[2], entry[1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
redis.call('EXPIRE', KEYS[3], ARGV[8])
local offset = epoch .. '.' .. id
redis.call('PUBLISH', ARGV[5], '{"offset":"' .. offset .. '",' .. string.sub(ARGV[4], 2))
return offset
"#;

/// Publishes notifications of one event stream.
#[derive(Clone)]
pub struct Publisher {
    keys: Keys,
    script: redis::Script,
}

impl Publisher {
    pub fn new(stream: &str) -> Self {
        Self {
            keys: Keys::of(stream),
            script: redis::Script::new(SCRIPT),
        }
    }

    /// Publishes `addressed` (ordered among a user's notifications by `position`, the
    /// event's) and returns its offset, or `None` when it was published before.
    pub async fn publish(
        &self,
        redis: &mut impl ConnectionLike,
        addressed: &Addressed,
        position: Position,
    ) -> Result<Option<Offset>, redis::RedisError> {
        let user = addressed.recipient;
        self.script
            .key(self.keys.epoch(user))
            .key(self.keys.history(user))
            .key(self.keys.seen(user))
            // The epoch the user's keys take if they have none (new, or lost): fresh
            // each time, so that a loss is never mistaken for the life before it.
            .arg(new_epoch())
            .arg(addressed.notification.id.to_string())
            .arg(position.0)
            .arg(addressed.notification.to_json())
            .arg(channel(user))
            .arg(HISTORY_LEN)
            .arg(SEEN_LEN)
            .arg(HISTORY_TTL_SECS)
            .invoke_async(redis)
            .await
    }
}

/// A fresh epoch name: 12 lowercase hex digits.
fn new_epoch() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}
