//! The hub's side: reading a user's history (written by [`crate::write`]) in one Redis
//! script: where it stands now, and whether it still covers a reader's place.

use domain::ids::UserId;
use redis::aio::ConnectionLike;

use crate::keys::Keys;
use crate::offset::{EntryId, Offset};

/// One read: the current epoch, the newest entry Redis removed from the history (trimmed),
/// the newest entry id, and the entries after the reader's place.
const SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[1])
if not epoch then return {false, '0-0', '0-0', {}} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {epoch, '0-0', '0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[2])
local deleted, top = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  if info[i] == 'last-generated-id' then top = info[i + 1] end
end
local entries = {}
if ARGV[3] == 'entries' then
  local start = '-'
  if ARGV[1] == epoch then start = '(' .. ARGV[2] end
  entries = redis.call('XRANGE', KEYS[2], start, '+')
end
return {epoch, deleted, top, entries}
"#;

/// What a reader has delivered: everything of `epoch` up to `entry`. With no epoch it
/// knows of none, so whatever history exists is new to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    pub epoch: Option<String>,
    pub entry: EntryId,
}

impl Delivered {
    /// Everything up to `offset`.
    pub fn up_to(offset: Offset) -> Self {
        Self {
            epoch: Some(offset.epoch),
            entry: offset.entry,
        }
    }
}

/// What a catch-up sends: whether the history covered the reader's place, and the frames.
#[derive(Debug)]
pub struct CatchUp {
    pub complete: bool,
    pub entries: Vec<(Offset, String)>,
    /// What the reader has delivered once they are sent.
    pub delivered: Delivered,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the notification history failed")]
    Redis(#[from] redis::RedisError),
    #[error("the notification history holds an entry id Keel did not write")]
    Corrupt,
}

type Reply = (Option<String>, String, String, Vec<(String, Vec<String>)>);

/// Reads the histories of one event stream.
#[derive(Clone)]
pub struct Reader {
    keys: Keys,
    script: redis::Script,
}

impl Reader {
    pub fn new(stream: &str) -> Self {
        Self {
            keys: Keys::of(stream),
            script: redis::Script::new(SCRIPT),
        }
    }

    async fn read(
        &self,
        redis: &mut impl ConnectionLike,
        user: UserId,
        delivered: &Delivered,
        entries: bool,
    ) -> Result<Reply, redis::RedisError> {
        self.script
            .key(self.keys.epoch(user))
            .key(self.keys.history(user))
            .arg(delivered.epoch.as_deref().unwrap_or(""))
            .arg(delivered.entry.to_string())
            .arg(if entries { "entries" } else { "tail" })
            .invoke_async(redis)
            .await
    }

    /// The place of a reader that starts live: the newest notification so far.
    pub async fn tail(
        &self,
        redis: &mut impl ConnectionLike,
        user: UserId,
    ) -> Result<Delivered, ReadError> {
        let (epoch, _, top, _) = self.read(redis, user, &Delivered::default(), false).await?;
        Ok(Delivered {
            epoch,
            entry: top.parse().map_err(|_| ReadError::Corrupt)?,
        })
    }

    /// Everything after `delivered` still in the history, and whether that is all of it.
    pub async fn after(
        &self,
        redis: &mut impl ConnectionLike,
        user: UserId,
        delivered: &Delivered,
    ) -> Result<CatchUp, ReadError> {
        let (epoch, deleted, top, rows) = self.read(redis, user, delivered, true).await?;
        let deleted: EntryId = deleted.parse().map_err(|_| ReadError::Corrupt)?;
        let top: EntryId = top.parse().map_err(|_| ReadError::Corrupt)?;
        let complete = match (&delivered.epoch, &epoch) {
            (None, _) => true,
            // Nothing after the reader's place was trimmed, and the history reaches it (a
            // place past the newest entry means the history itself was lost: expired,
            // evicted).
            (Some(mine), Some(current)) if mine == current => {
                delivered.entry >= deleted && delivered.entry <= top
            }
            // Redis lost the history the reader's place points into.
            (Some(_), _) => false,
        };
        let Some(epoch) = epoch else {
            return Ok(CatchUp {
                complete,
                entries: Vec::new(),
                delivered: Delivered::default(),
            });
        };
        let mut next = Delivered {
            entry: if delivered.epoch.as_ref() == Some(&epoch) {
                delivered.entry
            } else {
                EntryId::default()
            },
            epoch: Some(epoch.clone()),
        };
        let mut entries = Vec::with_capacity(rows.len());
        for (id, fields) in rows {
            let entry: EntryId = id.parse().map_err(|_| ReadError::Corrupt)?;
            let json = fields.into_iter().nth(1).ok_or(ReadError::Corrupt)?;
            next.entry = entry;
            entries.push((
                Offset {
                    epoch: epoch.clone(),
                    entry,
                },
                json,
            ));
        }
        Ok(CatchUp {
            complete,
            entries,
            delivered: next,
        })
    }
}
