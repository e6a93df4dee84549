//! The writer's aggregate cache: each stream's state, version and newest position,
//! brought up to date from the log under the append lock before a batch is decided.

use std::collections::{HashMap, HashSet};

use domain::ids::{Position, StreamId, UserId, Version};
use domain::{Standing, State};
use events::event_log;

/// Aggregates kept in memory; past this the cache starts over. A post keeps its title and
/// body (for no-op detection and full `post.updated` payloads), up to ~80 KB each, so
/// this bounds the cache to under a gigabyte in the worst case, far less in practice.
pub const CACHE_CAPACITY: usize = 10_000;

/// One stream as the writer last saw it.
pub struct Aggregate {
    pub state: State,
    pub version: Version,
    /// Position of the stream's newest event.
    pub position: Position,
}

/// The streams the writer has decided commands against.
#[derive(Default)]
pub struct AggregateCache {
    aggregates: HashMap<StreamId, Aggregate>,
}

impl AggregateCache {
    /// Takes the append lock and brings every stream of `streams` up to date (one query;
    /// another instance may have appended).
    /// Streams holding an event this code cannot decode are returned (and left out of
    /// the cache): only their commands fail, not the batch.
    pub async fn lock_and_refresh(
        &mut self,
        tx: &mut sqlx::PgConnection,
        streams: impl IntoIterator<Item = StreamId>,
    ) -> Result<HashSet<StreamId>, sqlx::Error> {
        let mut known: Vec<(StreamId, Version)> = Vec::new();
        for stream in streams {
            let entry = self
                .aggregates
                .entry(stream.clone())
                .or_insert_with(|| Aggregate {
                    state: State::initial(&stream),
                    version: Version::NONE,
                    position: Position(0),
                });
            if !known.iter().any(|(k, _)| *k == stream) {
                known.push((stream, entry.version));
            }
        }
        let mut unreadable = HashSet::new();
        for recorded in event_log::lock_and_read_newer(tx, &known).await? {
            if unreadable.contains(&recorded.stream_id) {
                continue;
            }
            match recorded.decode() {
                Ok(event) => {
                    if let Some(entry) = self.aggregates.get_mut(&recorded.stream_id) {
                        entry.state.apply(&event);
                        entry.version = recorded.version;
                        entry.position = recorded.position;
                    }
                }
                Err(error) => {
                    tracing::error!(
                        error = %error,
                        stream_id = %recorded.stream_id,
                        position = recorded.position.0,
                        "an event of this stream cannot be decoded; its commands fail"
                    );
                    self.aggregates.remove(&recorded.stream_id);
                    unreadable.insert(recorded.stream_id.clone());
                }
            }
        }
        Ok(unreadable)
    }

    /// Where `user` stands in Keel's own records, as far as the cache knows.
    pub fn standing(&self, user: UserId) -> Standing {
        self.aggregates
            .get(&StreamId::user(user))
            .map_or(Standing::Unregistered, |a| a.state.standing())
    }

    pub fn get_mut(&mut self, stream: &StreamId) -> Option<&mut Aggregate> {
        self.aggregates.get_mut(stream)
    }

    /// Records that `stream`'s newest event is at `position` (or later).
    pub fn advance(&mut self, stream: &StreamId, position: Position) {
        if let Some(entry) = self.aggregates.get_mut(stream) {
            entry.position = entry.position.max(position);
        }
    }

    /// Drops `stream`: it is read from the log again when next needed.
    pub fn forget(&mut self, stream: &StreamId) {
        self.aggregates.remove(stream);
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.aggregates.clear();
    }

    /// Starts over once past [`CACHE_CAPACITY`].
    pub fn bound(&mut self) {
        if self.aggregates.len() > CACHE_CAPACITY {
            self.aggregates.clear();
        }
    }
}
