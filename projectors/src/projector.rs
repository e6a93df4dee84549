//! One projection's live loop: a durable pull consumer (`projector-<name>`, `bus`) on the
//! event stream, applied in batches. With several partitions, one such loop runs per
//! partition this instance owns (`projector-<name>-<p>`), and every commit is fenced: it
//! happens only while the partition's lease is still this instance's.
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

use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::ledger::{self, ApplyError, Outcome};
use crate::ui_cache::UiCache;
use bus::pull::stream_sequence;
use bus::{
    Backoff, Batching, DeadLetterError, DeadLetterQueue, Durable, InFlight, Letter, Next,
    ProvisionError, Pull, PullError, chain, in_flight, retry_until, settle,
};
use domain::envelope;
use domain::ids::{AggregateKind, UserId};
use domain::recorded::RecordedEvent;
use events::lease::Fence;
use events::partitions::Partitions;
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
/// The pauses between tries of an event, and before consuming again after a failure.
pub const BACKOFF: Backoff = Backoff {
    first: FIRST_BACKOFF,
    max: Duration::from_secs(5),
};
/// How long a batch waits for more messages once its first one arrived.
pub const LINGER: Duration = Duration::from_millis(5);
/// Messages pulled and applied at once.
pub const BATCHING: Batching = Batching {
    fetch: BATCH,
    max: BATCH,
    linger: LINGER,
};
/// With nothing arriving for this long, the checkpoint is brought up to the log's head.
pub const IDLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("the read model's database is unavailable")]
    Database(#[source] sqlx::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl ProjectorError {
    /// The partition went to another instance: this loop ends (the group's tick starts a
    /// new one if it comes back).
    fn lease_lost(&self) -> bool {
        matches!(self, ProjectorError::Apply(ApplyError::LeaseLost))
    }
}

/// One projection, live: the whole stream, or one partition of it.
#[derive(Clone)]
pub struct Projector {
    pub projection: Projection,
    pub pool: PgPool,
    pub jetstream: jetstream::Context,
    /// The event stream (`KEEL_STREAM`).
    pub stream: String,
    pub subject_prefix: String,
    pub dead_letters: DeadLetterQueue,
    pub cache: Arc<UiCache>,
    pub partitions: Partitions,
    /// The partition this loop owns (`None`: one partition, shared by every instance
    /// through one durable consumer, the per-stream ledger keeping the order).
    pub partition: Option<Fence>,
}

type Delivery = (jetstream::Message, RecordedEvent);

impl Projector {
    fn schema(&self) -> &'static str {
        self.projection.schema()
    }

    /// Consumes until `stop` (or until the partition is lost); reconnects with backoff
    /// whatever else fails.
    pub async fn run(self, stop: CancellationToken) {
        let mut retries = retry_until(&stop, BACKOFF);
        while retries.next().await.is_some() {
            match self.consume(&stop).await {
                Ok(()) => return,
                Err(error) if error.lease_lost() => {
                    tracing::info!(consumer = %self.consumer(), "partition lost; stopping");
                    return;
                }
                Err(error) => tracing::warn!(
                    consumer = %self.consumer(),
                    error = %chain(&error),
                    "projection paused; retrying"
                ),
            }
        }
    }

    /// The durable consumer's name: `projector-<name>`, `projector-<name>-<p>` for a
    /// partition.
    pub fn consumer(&self) -> String {
        match &self.partition {
            None => self.projection.consumer(),
            Some(fence) => format!("{}-{}", self.projection.consumer(), fence.partition()),
        }
    }

    /// The projection's durable consumer (of its partition). It reads every event type:
    /// user and token streams span `user.*` and `token.*`, post streams `post.*` and
    /// `comment.*`, and the server (NATS 2.9) takes one filter per consumer, so the
    /// projection skips the streams it does not read.
    pub fn durable(&self) -> Durable {
        let partition = self.partition.as_ref().map_or(0, Fence::partition);
        Durable {
            name: self.consumer(),
            filter_subject: self.partitions.filter(&self.subject_prefix, partition),
            partitions: self.partitions,
            ack_wait: ACK_WAIT,
            max_ack_pending: (BATCH * 4) as i64,
        }
    }

    /// Whether this loop may still commit: always with one partition; else while its
    /// lease holds (locked until `tx` ends).
    async fn fenced(&self, tx: &mut sqlx::PgConnection) -> Result<(), ApplyError> {
        let Some(fence) = &self.partition else {
            return Ok(());
        };
        match fence.hold(tx).await.map_err(ApplyError::Bookkeeping)? {
            true => Ok(()),
            false => Err(ApplyError::LeaseLost),
        }
    }

    async fn consume(&self, stop: &CancellationToken) -> Result<(), ProjectorError> {
        let (stream, mut consumer) = self
            .durable()
            .provision(&self.jetstream, &self.stream)
            .await?;
        if let Some(fence) = &self.partition {
            // Only a shortcut: what is in flight comes back after its ack wait anyway.
            match in_flight(&stream, &mut consumer, self.partitions, fence.partition()).await {
                Ok(missed) => self.apply_in_flight(missed).await?,
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer(), error = %chain(&error), "events in flight not read; left to their redelivery")
                }
            }
        }
        let mut pull = Pull::start(&consumer, BATCHING).await?;
        tracing::info!(consumer = %self.consumer(), "projection consuming");
        loop {
            // Stop only between batches: the batch in hand is finished first.
            match pull.next(stop, IDLE).await? {
                Next::Stopped => {
                    pull.hand_back().await;
                    return Ok(());
                }
                Next::Idle => self.advance_checkpoint().await?,
                Next::Batch(batch) => self.process(batch).await?,
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

    /// Applies, before anything newer, what the partition's previous owner received and
    /// did not acknowledge (`bus::in_flight`): without it, those would come back only
    /// after their ack wait, and the streams they belong to would wait for them. They
    /// are redelivered later all the same, as duplicates. An event that fails here is
    /// left to that redelivery, which retries and dead-letters it as usual.
    async fn apply_in_flight(&self, missed: Vec<InFlight>) -> Result<(), ProjectorError> {
        let events: Vec<RecordedEvent> = missed
            .iter()
            .filter_map(|(_, payload)| envelope::from_bytes(payload).ok())
            .collect();
        for chunk in events.chunks(BATCH) {
            let chunk: Vec<&RecordedEvent> = chunk.iter().collect();
            let mut stale = Vec::new();
            match self.transact(&chunk, &mut stale).await {
                Ok(outcomes) => {
                    let announced = self.policy_changes(&chunk, &outcomes);
                    self.cache.invalidate(&mut stale).await;
                    self.cache.announce(&announced).await;
                }
                Err(error) if error.is_unavailable() => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(consumer = %self.consumer(), error = %chain(&error), "events in flight not applied; left to their redelivery");
                    return Ok(());
                }
            }
        }
        if !events.is_empty() {
            tracing::info!(consumer = %self.consumer(), events = events.len(), "applied what the previous owner had in flight");
        }
        Ok(())
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
                    settle_as(message, outcome).await;
                }
                self.cache.invalidate(&mut stale).await;
                self.cache.announce(&announced).await;
                Ok(())
            }
            Err(error) if error.is_unavailable() => {
                for (message, _) in &deliveries {
                    settle_as(message, Outcome::Early).await;
                }
                Err(error.into())
            }
            Err(error) => {
                tracing::warn!(
                    consumer = %self.consumer(),
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
        self.fenced(&mut tx).await?;
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
            // The batch in hand is finished before a stop: its retries are not cut short.
            let mut retries = retry_until(&CancellationToken::new(), BACKOFF);
            while let Some(attempt) = retries.next().await {
                let mut stale = Vec::new();
                match self.transact(&[event], &mut stale).await {
                    Ok(outcomes) => {
                        let announced = self.policy_changes(&[event], &outcomes);
                        for outcome in outcomes {
                            settle_as(message, outcome).await;
                        }
                        self.cache.invalidate(&mut stale).await;
                        self.cache.announce(&announced).await;
                        break;
                    }
                    Err(error) if error.is_unavailable() => {
                        for (message, _) in &deliveries[index..] {
                            settle_as(message, Outcome::Early).await;
                        }
                        return Err(error.into());
                    }
                    Err(error) if attempt < ATTEMPTS => {
                        tracing::warn!(
                            consumer = %self.consumer(),
                            event_id = %event.event_id,
                            position = event.position.0,
                            attempt,
                            error = %chain(&error),
                            "event failed; retrying"
                        );
                        // Keeps JetStream from redelivering it while it is retried here.
                        settle::progress(message).await;
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
        self.fenced(&mut tx).await?;
        if !ledger::is_next(&mut tx, self.schema(), event)
            .await
            .map_err(ProjectorError::Database)?
        {
            settle_as(message, Outcome::Early).await;
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
            consumer = %self.consumer(),
            event_id = %event.event_id,
            event_type = %event.event_type,
            position = event.position.0,
            reason,
            "event dead-lettered"
        );
        settle_as(message, Outcome::Applied).await;
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
            consumer = %self.consumer(),
            reason,
            "message is not an event; dead-lettered"
        );
        settle_as(&message, Outcome::Applied).await;
        Ok(())
    }

    async fn to_dead_letter_stream(
        &self,
        message: &jetstream::Message,
        event: Option<&RecordedEvent>,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        let consumer = self.consumer();
        let letter = Letter::new(
            &consumer,
            reason,
            event,
            stream_sequence(message),
            message.payload.clone(),
        );
        self.dead_letters.publish(&self.jetstream, letter).await
    }
}

/// Acks what is done (applied, or a duplicate); hands back what came too early.
async fn settle_as(message: &jetstream::Message, outcome: Outcome) {
    let settled = match outcome {
        Outcome::Applied | Outcome::Duplicate => settle::ack(message).await,
        Outcome::Early => settle::nak(message, EARLY_DELAY).await,
    };
    // A lost ack only means a redelivery, which is a duplicate by then.
    if let Err(error) = settled {
        tracing::debug!(error = %chain(&error), "ack not sent");
    }
}
