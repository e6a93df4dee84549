//! The stream Keel publishes to and its dead-letter stream: provisioned, and checked
//! against what Keel needs.
//!
//! Durability (PROMISES P18): the stream uses file storage, a duplicate window of at
//! least two minutes, and discards nothing by itself (no limits; `DiscardPolicy::New`
//! refuses rather than silently drops if an operator adds limits). The server's
//! `sync_interval` is not visible to clients: Debian's nats-server syncs every two
//! minutes by default, so an OS crash can lose acknowledged messages. Postgres stays the
//! source of truth, and `command-api republish` rebuilds the stream from the log.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use events::partitions::Partitions;

/// The shortest duplicate window Keel accepts on its stream.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long provisioning at start may wait for NATS before the publisher takes over.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(3);

/// Where events go: the stream's name and the subject prefix (`<prefix>.<type>`, or
/// `<prefix>.<type>.<partition>`).
#[derive(Debug, Clone)]
pub struct EventStream {
    pub name: String,
    pub subject_prefix: String,
    /// JetStream replicas of the stream and its dead-letter stream (`KEEL_STREAM_REPLICAS`).
    pub replicas: usize,
    /// The stream's partitions (`KEEL_PARTITIONS`), fixed for its life.
    pub partitions: Partitions,
}

impl EventStream {
    /// The stream of `settings`, with `replicas` replicas.
    pub fn of(settings: &events::settings::Settings, replicas: usize) -> Self {
        Self {
            name: settings.stream.clone(),
            subject_prefix: settings.subject_prefix.clone(),
            replicas,
            partitions: settings.partitions,
        }
    }
}

/// `KEEL_STREAM_REPLICAS`: 1 (a single server) or 3 (a cluster of three or more).
pub fn parse_replicas(text: &str) -> Result<usize, String> {
    match text.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        other => Err(format!("{other:?} is not 1 or 3")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot create JetStream stream {stream}")]
    Create {
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("JetStream stream {stream} exists but is incompatible: {reason}")]
    Incompatible { stream: String, reason: String },
    #[error("cannot read JetStream stream {stream}")]
    Read {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl EventStream {
    /// The subject of an event of `event_type` in `stream_id`.
    pub fn subject(&self, event_type: &str, stream_id: &domain::ids::StreamId) -> String {
        self.partitions
            .subject(&self.subject_prefix, event_type, stream_id)
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            duplicate_window: MIN_DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            allow_direct: true,
            description: Some(self.partitions.description()),
            ..Default::default()
        }
    }

    /// Creates the stream and its dead-letter stream, or checks and updates existing
    /// ones. An existing stream with memory storage, or that cannot take Keel's subjects,
    /// is an error. The publisher manages both (as the command API's NATS user): the
    /// projectors and the relay may only consume the one and publish to the other.
    pub async fn ensure(
        &self,
        context: &jetstream::Context,
    ) -> Result<stream::Stream, StreamError> {
        let stream = self.ensure_event_stream(context).await?;
        self.ensure_dead_letter_stream(context).await?;
        Ok(stream)
    }

    /// Provisioning at start: an incompatible stream stops the start (the error); an
    /// unreachable NATS does not (commands keep working, and the publisher provisions the
    /// streams when NATS is back).
    pub async fn provision(&self, context: &jetstream::Context) -> Result<(), StreamError> {
        match tokio::time::timeout(PROVISION_TIMEOUT, self.ensure(context)).await {
            Ok(Err(error @ StreamError::Incompatible { .. })) => return Err(error),
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "jetstream stream not ready; the publisher retries")
            }
            Err(_) => tracing::warn!("nats not reachable at start; the publisher retries"),
            Ok(Ok(_)) => {}
        }
        Ok(())
    }

    /// The dead-letter stream `<stream>_DLQ` on `dlq.<prefix>.>`: file storage, kept
    /// until removed, created if missing.
    async fn ensure_dead_letter_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<(), StreamError> {
        let name = events::nats::dead_letter_stream(&self.name);
        let subjects = events::nats::dead_letter_subjects(&self.subject_prefix);
        context
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{subjects}.>")],
                storage: stream::StorageType::File,
                duplicate_window: MIN_DUPLICATE_WINDOW,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map(drop)
            .map_err(|source| StreamError::Create {
                stream: name,
                source,
            })
    }

    async fn ensure_event_stream(
        &self,
        context: &jetstream::Context,
    ) -> Result<stream::Stream, StreamError> {
        let wanted = self.config();
        let Ok(mut existing) = context.get_stream(&self.name).await else {
            return context
                .create_stream(wanted)
                .await
                .map_err(|source| StreamError::Create {
                    stream: self.name.clone(),
                    source,
                });
        };
        let current = existing
            .info()
            .await
            .map_err(|source| StreamError::Read {
                stream: self.name.clone(),
                source: Box::new(source),
            })?
            .config
            .clone();
        if current.storage != stream::StorageType::File {
            return Err(self.incompatible("it uses memory storage, Keel needs file storage"));
        }
        if current.retention != stream::RetentionPolicy::Limits || current.sealed {
            return Err(self.incompatible(
                "its retention is not `limits` (or it is sealed): events could be dropped",
            ));
        }
        let recorded = Partitions::recorded(current.description.as_deref())
            .map_err(|e| self.incompatible(&format!("its description: {e}")))?;
        if recorded != self.partitions {
            return Err(self.incompatible(&format!(
                "it has {recorded} partition(s) and KEEL_PARTITIONS is {} (partitions are fixed for a stream's life)",
                self.partitions
            )));
        }
        if current.subjects != wanted.subjects
            || current.description != wanted.description
            || current.duplicate_window < MIN_DUPLICATE_WINDOW
            || current.num_replicas != wanted.num_replicas
        {
            // JetStream moves a stream between one and three replicas in place.
            let updated = stream::Config {
                subjects: wanted.subjects.clone(),
                duplicate_window: current.duplicate_window.max(MIN_DUPLICATE_WINDOW),
                num_replicas: wanted.num_replicas,
                description: wanted.description.clone(),
                ..current
            };
            context
                .update_stream(updated)
                .await
                .map_err(|e| self.incompatible(&e.to_string()))?;
        }
        context
            .get_stream(&self.name)
            .await
            .map_err(|source| StreamError::Read {
                stream: self.name.clone(),
                source: Box::new(source),
            })
    }

    fn incompatible(&self, reason: &str) -> StreamError {
        StreamError::Incompatible {
            stream: self.name.clone(),
            reason: reason.to_owned(),
        }
    }
}
