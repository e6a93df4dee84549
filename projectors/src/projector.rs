//! One projection's live loop: a durable pull consumer (`projector-<name>`) on the event
//! stream, applied in batches.
//!
//! A batch is applied in one Postgres transaction together with its bookkeeping (versions
//! per stream, checkpoint), then acknowledged; a crash before the commit leaves nothing
//! behind, a crash after it makes the redelivery a duplicate. If the batch fails, its
//! events are applied one at a time: an event that fails is retried in place with backoff
//! (later events wait, so order holds), and after [`ATTEMPTS`] it goes to the dead-letter
//! stream and the projection moves on. A database that is away fails no event: the batch
//! is handed back to JetStream and the loop backs off.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
use crate::dead_letter_queue::{DeadLetterError, DeadLetterQueue, Letter};
use crate::ledger::{self, ApplyError, Outcome};
use events::envelope;
use events::event_log::RecordedEvent;
use events::ids::{AggregateKind, UserId};
use events::policy;
use events::read_model::{self, Projection};

/// Most messages applied in one transaction.
pub const BATCH: usize = 500;
/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long an event that came before its predecessor waits before redelivery.
pub const EARLY_DELAY: Duration = Duration::from_millis(500);
/// Tries of an event that fails before it is dead-lettered.
pub const ATTEMPTS: u32 = 5;
/// The pause after the first failed try; it doubles each time.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How long a batch waits for more messages once its first one arrived.
pub const LINGER: Duration = Duration::from_millis(5);
/// With nothing arriving for this long, the checkpoint is brought up to the log's head.
pub const IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("the event stream {stream} is not available")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create or open the durable consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("consuming the stream failed")]
    Consume(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("the read model's database is unavailable")]
    Database(#[source] sqlx::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// One projection, live.
pub struct Projector {
    pub projection: Projection,
    pub pool: PgPool,
    pub jetstream: jetstream::Context,
    /// The event stream (`KEEL_STREAM`).
    pub stream: String,
    pub subject_prefix: String,
    pub dead_letters: DeadLetterQueue,
    pub cache: Arc<Cache>,
}

type Delivery = (jetstream::Message, RecordedEvent);

impl Projector {
    fn schema(&self) -> &'static str {
        self.projection.schema()
    }

    /// Consumes until `stop`; reconnects with backoff whatever fails.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.consume(&stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(
                        consumer = %self.projection.consumer(),
                        error = %chain(&error),
                        "projection paused; retrying"
                    );
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// The durable consumer, created on first use.
    pub async fn consumer(&self) -> Result<consumer::PullConsumer, ProjectorError> {
        let name = self.projection.consumer();
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|source| ProjectorError::Stream {
                stream: self.stream.clone(),
                source,
            })?;
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.projection.filter_subject(&self.subject_prefix),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Never dropped by the server: giving up is the projector's call.
            max_deliver: -1,
            max_ack_pending: (BATCH * 4) as i64,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        };
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| ProjectorError::Consumer {
            consumer: name.clone(),
            source,
        };
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(&name, config.clone())
            .await
            .map_err(|e| failed(Box::new(e)))?;
        // A consumer made by an older Keel may filter less than the projection now reads
        // (`users` read `<prefix>.user.>` before it read revoked tokens too): update it;
        // its acknowledged position stays.
        if consumer.cached_info().config.filter_subject != config.filter_subject {
            tracing::info!(consumer = %name, filter = %config.filter_subject, "updating the consumer's filter");
            consumer = stream
                .create_consumer(config)
                .await
                .map_err(|e| failed(Box::new(e)))?;
        }
        Ok(consumer)
    }

    async fn consume(&self, stop: &CancellationToken) -> Result<(), ProjectorError> {
        let consumer = self.consumer().await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await
            .map_err(|e| ProjectorError::Consume(Box::new(e)))?;
        let mut messages = messages;
        tracing::info!(consumer = %self.projection.consumer(), "projection consuming");
        loop {
            // Stop only between batches: the batch in hand is finished first.
            let first = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                first = tokio::time::timeout(IDLE, messages.next()) => first,
            };
            let Ok(first) = first else {
                self.advance_checkpoint().await?;
                continue;
            };
            let Some(first) = first else {
                return Err(ProjectorError::Consume("the message stream ended".into()));
            };
            let mut batch = Vec::with_capacity(BATCH);
            let mut failure = None;
            let mut next = Some(first);
            let gathered = tokio::time::Instant::now() + LINGER;
            while let Some(item) = next.take() {
                match item {
                    Ok(message) => batch.push(message),
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
                if batch.len() < BATCH {
                    next = tokio::time::timeout_at(gathered, messages.next())
                        .await
                        .ok()
                        .flatten();
                }
            }
            if !batch.is_empty() {
                self.process(batch).await?;
            }
            if let Some(error) = failure {
                return Err(ProjectorError::Consume(Box::new(error)));
            }
        }
    }

    /// Brings the stored checkpoint up to date (when idle: the log may have moved on in
    /// streams this projection does not read).
    pub async fn advance_checkpoint(&self) -> Result<(), ProjectorError> {
        read_model::advance_checkpoint(&self.pool, self.projection, self.schema())
            .await
            .map(drop)
            .map_err(ProjectorError::Database)
    }

    /// Applies one batch of messages and settles each with JetStream.
    pub async fn process(&self, messages: Vec<jetstream::Message>) -> Result<(), ProjectorError> {
        let mut deliveries: Vec<Delivery> = Vec::with_capacity(messages.len());
        for message in messages {
            match envelope::from_bytes(&message.payload) {
                Ok(event) => deliveries.push((message, event)),
                Err(error) => self.reject(message, &chain(&error)).await?,
            }
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        let events: Vec<&RecordedEvent> = deliveries.iter().map(|(_, e)| e).collect();
        let mut stale = Vec::new();
        match self.transact(&events, &mut stale).await {
            Ok(outcomes) => {
                let announced = self.policy_changes(&events, &outcomes);
                for ((message, _), outcome) in deliveries.iter().zip(outcomes) {
                    settle(message, outcome).await;
                }
                self.cache.invalidate(&mut stale).await;
                self.cache.announce(&announced).await;
                Ok(())
            }
            Err(error) if error.is_unavailable() => {
                for (message, _) in &deliveries {
                    settle(message, Outcome::Early).await;
                }
                Err(error.into())
            }
            Err(error) => {
                tracing::warn!(
                    consumer = %self.projection.consumer(),
                    error = %chain(&error),
                    "batch failed; applying its events one at a time"
                );
                self.one_at_a_time(&deliveries).await
            }
        }
    }

    /// The `policy.invalidate.*` channels to announce for the policy events of a batch
    /// just committed (`users` only, the projection that reads every policy event).
    /// Duplicates are announced again: the instance that applied them first may have
    /// died before announcing, and an extra eviction costs one read.
    fn policy_changes(&self, events: &[&RecordedEvent], outcomes: &[Outcome]) -> Vec<String> {
        if self.projection != Projection::Users {
            return vec![];
        }
        let mut channels: Vec<String> = events
            .iter()
            .zip(outcomes)
            .filter(|(event, outcome)| {
                **outcome != Outcome::Early
                    && policy::EVENT_TYPES.contains(&event.event_type.as_str())
            })
            .map(|(event, _)| match event.stream_id.kind() {
                AggregateKind::User => {
                    policy::invalidate_channel(UserId(event.stream_id.aggregate_id()))
                }
                AggregateKind::Token | AggregateKind::Post => policy::INVALIDATE_ALL.to_owned(),
            })
            .collect();
        channels.sort_unstable();
        channels.dedup();
        channels
    }

    async fn transact(
        &self,
        events: &[&RecordedEvent],
        stale: &mut Vec<UserId>,
    ) -> Result<Vec<Outcome>, ApplyError> {
        let mut tx = self.pool.begin().await.map_err(ApplyError::Bookkeeping)?;
        ledger::lock(&mut tx, self.projection)
            .await
            .map_err(ApplyError::Bookkeeping)?;
        let outcomes =
            ledger::apply(&mut tx, self.projection, self.schema(), events, stale).await?;
        read_model::advance_checkpoint(&mut *tx, self.projection, self.schema())
            .await
            .map_err(ApplyError::Bookkeeping)?;
        tx.commit().await.map_err(ApplyError::Bookkeeping)?;
        Ok(outcomes)
    }

    async fn one_at_a_time(&self, deliveries: &[Delivery]) -> Result<(), ProjectorError> {
        for (index, (message, event)) in deliveries.iter().enumerate() {
            let mut attempt = 1;
            loop {
                let mut stale = Vec::new();
                match self.transact(&[event], &mut stale).await {
                    Ok(outcomes) => {
                        let announced = self.policy_changes(&[event], &outcomes);
                        for outcome in outcomes {
                            settle(message, outcome).await;
                        }
                        self.cache.invalidate(&mut stale).await;
                        self.cache.announce(&announced).await;
                        break;
                    }
                    Err(error) if error.is_unavailable() => {
                        for (message, _) in &deliveries[index..] {
                            settle(message, Outcome::Early).await;
                        }
                        return Err(error.into());
                    }
                    Err(error) if attempt < ATTEMPTS => {
                        tracing::warn!(
                            consumer = %self.projection.consumer(),
                            event_id = %event.event_id,
                            position = event.position.0,
                            attempt,
                            error = %chain(&error),
                            "event failed; retrying"
                        );
                        // Keeps JetStream from redelivering it while it is retried here.
                        let _ = message.ack_with(AckKind::Progress).await;
                        tokio::time::sleep(FIRST_BACKOFF * 2_u32.pow(attempt - 1)).await;
                        attempt += 1;
                    }
                    Err(error) => {
                        self.bury(message, event, &chain(&error)).await?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Dead-letters an event that kept failing, under the projection's lock: to the
    /// dead-letter stream (a repeat after a crash is deduplicated there), then to the
    /// model's `dead_letters`, which also lets its stream move on; then acks it. Only the
    /// next event of its stream is given up on; one whose predecessor is what fails waits
    /// for that predecessor's own turn.
    async fn bury(
        &self,
        message: &jetstream::Message,
        event: &RecordedEvent,
        reason: &str,
    ) -> Result<(), ProjectorError> {
        let mut tx = self.pool.begin().await.map_err(ProjectorError::Database)?;
        ledger::lock(&mut tx, self.projection)
            .await
            .map_err(ProjectorError::Database)?;
        if !ledger::is_next(&mut tx, self.schema(), event)
            .await
            .map_err(ProjectorError::Database)?
        {
            settle(message, Outcome::Early).await;
            return Ok(());
        }
        self.to_dead_letter_stream(message, Some(event), reason)
            .await?;
        ledger::dead_letter(&mut tx, self.schema(), event, reason)
            .await
            .map_err(ProjectorError::Database)?;
        read_model::advance_checkpoint(&mut *tx, self.projection, self.schema())
            .await
            .map_err(ProjectorError::Database)?;
        tx.commit().await.map_err(ProjectorError::Database)?;
        tracing::error!(
            consumer = %self.projection.consumer(),
            event_id = %event.event_id,
            event_type = %event.event_type,
            position = event.position.0,
            reason,
            "event dead-lettered"
        );
        settle(message, Outcome::Applied).await;
        Ok(())
    }

    /// A message that is not an event at all goes to the dead-letter stream only.
    async fn reject(
        &self,
        message: jetstream::Message,
        reason: &str,
    ) -> Result<(), ProjectorError> {
        self.to_dead_letter_stream(&message, None, reason).await?;
        tracing::error!(
            consumer = %self.projection.consumer(),
            reason,
            "message is not an event; dead-lettered"
        );
        settle(&message, Outcome::Applied).await;
        Ok(())
    }

    async fn to_dead_letter_stream(
        &self,
        message: &jetstream::Message,
        event: Option<&RecordedEvent>,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        self.dead_letters
            .publish(
                &self.jetstream,
                Letter {
                    consumer: &self.projection.consumer(),
                    reason,
                    event_id: event.map(|e| e.event_id.to_string()),
                    position: event.map(|e| e.position.0),
                    stream_sequence: message
                        .info()
                        .map(|i| i.stream_sequence)
                        .unwrap_or_default(),
                    payload: message.payload.clone(),
                },
            )
            .await
    }
}

/// Acks what is done (applied, or a duplicate); hands back what came too early.
async fn settle(message: &jetstream::Message, outcome: Outcome) {
    let kind = match outcome {
        Outcome::Applied | Outcome::Duplicate => AckKind::Ack,
        Outcome::Early => AckKind::Nak(Some(EARLY_DELAY)),
    };
    // A lost ack only means a redelivery, which is a duplicate by then.
    if let Err(error) = message.ack_with(kind).await {
        tracing::debug!(error = %error, "ack not sent");
    }
}

/// An error and its sources, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
