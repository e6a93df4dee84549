//! The notification relay: the JetStream durable consumer `relay-notifications` that turns
//! events into per-user notifications on Redis (command -> log -> outbox -> JetStream ->
//! **relay -> Redis** -> WebSocket hub).
//!
//! Events are taken in stream order, one at a time. An event that notifies someone
//! (`events::notification::Trigger`) has its actor's name read from the event log as it
//! was at that event (the relay keeps no copy and never calls the command API), then is
//! published by [`publish`], and only then acknowledged. A crash in between makes the
//! redelivery a duplicate the publish script drops. While Redis or Postgres is away the
//! event is retried in place (it is not the event's fault), so nothing later overtakes
//! it; an event that cannot be read at all goes to the dead-letter stream. One instance
//! is active at a time (the others wait on a Postgres lock and take over within seconds);
//! on taking over, what the previous one had received but not acknowledged is relayed
//! first, in order.

pub mod publish;

use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, AckKind, consumer};
use bytes::Bytes;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use events::envelope;
use events::event_log::{self, RecordedEvent};
use events::notification::Trigger;
use projectors::dead_letter_queue::{DeadLetterError, DeadLetterQueue, Letter};
use projectors::projector::chain;
pub use projectors::{Config, StartError};

pub use crate::publish::NotificationPublisher;

/// The durable consumer's name.
pub const CONSUMER: &str = "relay-notifications";
/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a waiting instance tries to become the active relay, and the active one
/// proves it still is.
pub const LEADER_POLL: Duration = Duration::from_secs(1);
/// How long the active relay's lock session may stay silent before Postgres ends it.
pub const LEADER_IDLE: Duration = Duration::from_secs(10);
/// The session advisory lock that makes one instance the active relay.
const LEADER_LOCK: i64 = 7_261_530_813_950_019;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("the event stream {stream} is not available")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create or open the durable consumer {CONSUMER}")]
    Consumer(#[source] jetstream::stream::ConsumerError),
    #[error("consuming the stream failed")]
    Consume(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("lost or could not take the relay's lock")]
    Leadership(#[source] sqlx::Error),
}

#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("reading the actor's name failed")]
    Database(#[source] sqlx::Error),
    #[error("publishing to Redis failed")]
    Redis(#[source] redis::RedisError),
}

/// The relay, ready to run.
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    redis: ConnectionManager,
    publisher: NotificationPublisher,
    stream: String,
    subject_prefix: String,
    dead_letters: DeadLetterQueue,
    /// While this instance is the active relay: the session that holds the lock.
    leader: Option<PgConnection>,
}

/// Opens Postgres (created and migrated if needed), NATS and Redis (both retried while
/// away).
pub async fn build(config: &Config) -> Result<Relay, StartError> {
    let ca = events::tls::PrivateCa::load(config.tls_ca_file.as_deref())?;
    let pool = events::database::open(
        &config.database_url,
        config.migrate_database_url.as_deref(),
        2,
    )
    .await?;
    let redis = ca.redis(&config.redis_url).map_err(StartError::Redis)?;
    // Lazy: the relay starts while Redis is away, and retries the event in hand.
    let redis = ConnectionManager::new_lazy_with_config(
        redis,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2))),
    )
    .map_err(StartError::Redis)?;
    let nats = events::nats::connect(ca.nats(), &config.nats_url, config.nats_creds.as_deref())
        .await
        .map_err(StartError::Nats)?;
    Ok(Relay {
        pool,
        jetstream: jetstream::new(nats),
        redis,
        publisher: NotificationPublisher::new(&config.stream),
        stream: config.stream.clone(),
        subject_prefix: config.subject_prefix.clone(),
        dead_letters: DeadLetterQueue::of(&config.subject_prefix),
        leader: None,
    })
}

impl Relay {
    /// Relays until `stop`; reconnects with backoff whatever fails. The event in hand is
    /// finished (or left unacknowledged, for redelivery) first.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.consume(&stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(consumer = CONSUMER, error = %chain(&error), "relay paused; retrying")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Waits until this instance is the active relay (`events::leader`): one at a time,
    /// so that a user's notifications keep the order of their events.
    async fn lead(&mut self, stop: &CancellationToken) -> Result<bool, RelayError> {
        self.leader = None;
        let mut session = self
            .pool
            .acquire()
            .await
            .map_err(RelayError::Leadership)?
            .detach();
        if !events::leader::acquire(&mut session, LEADER_LOCK, LEADER_IDLE, LEADER_POLL, stop)
            .await
            .map_err(RelayError::Leadership)?
        {
            return Ok(false);
        }
        tracing::info!(consumer = CONSUMER, "this instance is the active relay");
        self.leader = Some(session);
        Ok(true)
    }

    /// Proves the lock is still held (and keeps its session from idling out).
    async fn still_leading(&mut self) -> Result<(), RelayError> {
        let session = self
            .leader
            .as_mut()
            .ok_or_else(|| RelayError::Consume("not the active relay".into()))?;
        sqlx::query("SELECT 1")
            .execute(session)
            .await
            .map(drop)
            .map_err(RelayError::Leadership)
    }

    async fn consume(&mut self, stop: &CancellationToken) -> Result<(), RelayError> {
        if !self.lead(stop).await? {
            return Ok(());
        }
        let stream = self
            .jetstream
            .get_stream(&self.stream)
            .await
            .map_err(|source| RelayError::Stream {
                stream: self.stream.clone(),
                source,
            })?;
        let mut consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    filter_subject: format!("{}.>", self.subject_prefix),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    // Never dropped by the server: an event waits until it is relayed.
                    max_deliver: -1,
                    max_ack_pending: 1000,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(RelayError::Consumer)?;
        if !self.relay_in_flight(&stream, &mut consumer, stop).await? {
            return Ok(());
        }
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(200)
            .messages()
            .await
            .map_err(|e| RelayError::Consume(Box::new(e)))?;
        tracing::info!(consumer = CONSUMER, "relay consuming");
        let mut keepalive = tokio::time::interval(LEADER_POLL);
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = keepalive.tick() => {
                    self.still_leading().await?;
                    continue;
                }
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(error)) => return Err(RelayError::Consume(Box::new(error))),
                None => return Err(RelayError::Consume("the message stream ended".into())),
            };
            let sequence = message
                .info()
                .map(|i| i.stream_sequence)
                .unwrap_or_default();
            if !self
                .relay(&message.payload, sequence, Some(&message), stop)
                .await?
            {
                return Ok(());
            }
            message
                .ack()
                .await
                .map_err(|e| RelayError::Consume(e.to_string().into()))?;
        }
    }

    /// Relays, in order and before anything newer, what an earlier instance received
    /// but did not acknowledge (it may have crashed): JetStream would hand those out again
    /// only after their ack wait, behind newer ones. They are read straight from the
    /// stream; when JetStream redelivers them later, they are duplicates and dropped.
    async fn relay_in_flight(
        &mut self,
        stream: &jetstream::stream::Stream,
        consumer: &mut consumer::PullConsumer,
        stop: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let info = consumer
            .info()
            .await
            .map_err(|e| RelayError::Consume(Box::new(e)))?;
        let (floor, delivered) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        for sequence in floor + 1..=delivered {
            let message = match stream.get_raw_message(sequence).await {
                Ok(message) => message,
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(error) => return Err(RelayError::Consume(Box::new(error))),
            };
            if !self.relay(&message.payload, sequence, None, stop).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Relays one message; `false` when stopped before it was done (left for redelivery).
    /// `message`, when it came from the consumer, is kept alive while Redis or Postgres
    /// is away.
    async fn relay(
        &mut self,
        payload: &Bytes,
        stream_sequence: u64,
        message: Option<&jetstream::Message>,
        stop: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let event = match envelope::from_bytes(payload) {
            Ok(event) => event,
            Err(error) => {
                self.dead_letter(payload, stream_sequence, None, &chain(&error))
                    .await?;
                return Ok(true);
            }
        };
        let trigger = match event.decode() {
            Ok(decoded) => Trigger::of(&decoded),
            Err(error) => {
                self.dead_letter(payload, stream_sequence, Some(&event), &chain(&error))
                    .await?;
                return Ok(true);
            }
        };
        let Some(trigger) = trigger else {
            return Ok(true);
        };
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.deliver(&event, trigger.clone()).await {
                Ok(()) => return Ok(true),
                Err(error) => tracing::warn!(
                    consumer = CONSUMER,
                    position = event.position.0,
                    error = %chain(&error),
                    "notification not relayed yet; retrying"
                ),
            }
            // Still working on it: JetStream must not hand it out again meanwhile.
            if let Some(message) = message {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            self.still_leading().await?;
            tokio::select! {
                () = stop.cancelled() => return Ok(false),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn deliver(
        &mut self,
        event: &RecordedEvent,
        trigger: Trigger,
    ) -> Result<(), DeliverError> {
        let name = match trigger.actor() {
            Some(actor) => event_log::user_name_before(&self.pool, actor, event.position)
                .await
                .map_err(DeliverError::Database)?,
            None => None,
        };
        let addressed = trigger.address(event, name);
        let offset = self
            .publisher
            .publish(&mut self.redis, &addressed, event.position)
            .await
            .map_err(DeliverError::Redis)?;
        match offset {
            Some(offset) => {
                tracing::debug!(position = event.position.0, %offset, "notification relayed")
            }
            None => tracing::debug!(
                position = event.position.0,
                "notification relayed before; dropped"
            ),
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        payload: &Bytes,
        stream_sequence: u64,
        event: Option<&RecordedEvent>,
        reason: &str,
    ) -> Result<(), DeadLetterError> {
        tracing::error!(
            consumer = CONSUMER,
            reason,
            "event cannot be relayed; dead-lettered"
        );
        self.dead_letters
            .publish(
                &self.jetstream,
                Letter {
                    consumer: CONSUMER,
                    reason,
                    event_id: event.map(|e| e.event_id.to_string()),
                    position: event.map(|e| e.position.0),
                    stream_sequence,
                    payload: payload.clone(),
                },
            )
            .await
    }
}
