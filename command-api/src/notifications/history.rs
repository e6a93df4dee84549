//! Reading a user's notification history (written by the relay's script): where a socket
//! resumes, and whether the history still covers the offset it resumes from.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use events::ids::UserId;
use events::notification::{EntryId, Keys, Offset};

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

/// Where a socket stands: it has delivered everything of `epoch` up to `entry`. With no
/// epoch it knows of none, so whatever history exists is new to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: Option<String>,
    pub entry: EntryId,
}

impl Cursor {
    pub fn at(offset: Offset) -> Self {
        Self {
            epoch: Some(offset.epoch),
            entry: offset.entry,
        }
    }
}

/// What a catch-up sends: whether the history covered the cursor, and the frames.
#[derive(Debug)]
pub struct CatchUp {
    pub complete: bool,
    pub entries: Vec<(Offset, String)>,
    /// Where the socket stands once they are sent.
    pub cursor: Cursor,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the notification history failed")]
    Redis(#[from] redis::RedisError),
    #[error("the notification history holds an entry id Keel did not write")]
    Corrupt,
}

/// Tries of one read before the socket is closed (1011) or refused (503).
const ATTEMPTS: u32 = 6;

type Reply = (Option<String>, String, String, Vec<(String, Vec<String>)>);

/// Reads histories; one multiplexed Redis connection shared by every socket.
pub struct History {
    keys: Keys,
    connection: ConnectionManager,
    script: redis::Script,
}

impl History {
    pub fn new(client: &redis::Client, keys: Keys) -> Result<Self, redis::RedisError> {
        // No retries inside the connection: `read` retries, briefly, so that an absent
        // Redis is reported within a second or two.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        Ok(Self {
            keys,
            connection: ConnectionManager::new_lazy_with_config(client.clone(), config)?,
            script: redis::Script::new(SCRIPT),
        })
    }

    /// One read, tried [`ATTEMPTS`] times: right after Redis comes back, the first call
    /// on the old connection fails while the connection manager reconnects.
    async fn read(
        &self,
        user: UserId,
        cursor: &Cursor,
        entries: bool,
    ) -> Result<Reply, HistoryError> {
        let mut pause = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let mut connection = self.connection.clone();
            let read = self
                .script
                .key(self.keys.epoch())
                .key(self.keys.history(user))
                .arg(cursor.epoch.as_deref().unwrap_or(""))
                .arg(cursor.entry.to_string())
                .arg(if entries { "entries" } else { "tail" })
                .invoke_async(&mut connection)
                .await;
            match read {
                Ok(reply) => return Ok(reply),
                Err(error) if attempt >= ATTEMPTS => return Err(error.into()),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// The place of a socket that starts live: the newest notification so far.
    pub async fn tail(&self, user: UserId) -> Result<Cursor, HistoryError> {
        let (epoch, _, top, _) = self.read(user, &Cursor::default(), false).await?;
        Ok(Cursor {
            epoch,
            entry: top.parse().map_err(|_| HistoryError::Corrupt)?,
        })
    }

    /// Everything after `cursor` still in the history, and whether that is all of it.
    pub async fn after(&self, user: UserId, cursor: &Cursor) -> Result<CatchUp, HistoryError> {
        let (epoch, deleted, top, rows) = self.read(user, cursor, true).await?;
        let deleted: EntryId = deleted.parse().map_err(|_| HistoryError::Corrupt)?;
        let top: EntryId = top.parse().map_err(|_| HistoryError::Corrupt)?;
        let complete = match (&cursor.epoch, &epoch) {
            (None, _) => true,
            // Nothing after the cursor was trimmed, and the history reaches it (a cursor
            // past the newest entry means the history itself was lost: expired, evicted).
            (Some(mine), Some(current)) if mine == current => {
                cursor.entry >= deleted && cursor.entry <= top
            }
            // Redis lost the history the cursor points into.
            (Some(_), _) => false,
        };
        let Some(epoch) = epoch else {
            return Ok(CatchUp {
                complete,
                entries: Vec::new(),
                cursor: Cursor::default(),
            });
        };
        let mut next = Cursor {
            entry: if cursor.epoch.as_ref() == Some(&epoch) {
                cursor.entry
            } else {
                EntryId::default()
            },
            epoch: Some(epoch.clone()),
        };
        let mut entries = Vec::with_capacity(rows.len());
        for (id, fields) in rows {
            let entry: EntryId = id.parse().map_err(|_| HistoryError::Corrupt)?;
            let json = fields.into_iter().nth(1).ok_or(HistoryError::Corrupt)?;
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
            cursor: next,
        })
    }
}
