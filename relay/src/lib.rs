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
//! is active at a time (it holds a `bus` lease; the others wait for it and take over
//! within seconds); on taking over, what the previous one had received but not
//! acknowledged is relayed first, in order. The consumer plumbing (durable consumer,
//! settling, retries, dead letters, the lease) is the `bus` crate's.
//!
//! - [`config`]: flags and environment. [`publish`]: one notification onto Redis.

pub mod config;
pub mod publish;

use std::time::Duration;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, consumer};
use bus::pull::stream_sequence;
use bus::settle::{self, SettleError};
use bus::{
    Backoff, Batching, ConnectError, DeadLetterError, DeadLetterQueue, Durable, Lease, LeaseError,
    Letter, Next, ProvisionError, Pull, PullError, Terms, chain, retry_until,
};
use bytes::Bytes;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use events::envelope;
use events::event_log::{self, RecordedEvent};
use events::notification::Trigger;

pub use crate::config::Config;
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
/// The active relay's lease.
const LEADERSHIP: Terms = Terms {
    key: LEADER_LOCK,
    poll: LEADER_POLL,
    idle: LEADER_IDLE,
};
/// The pauses before consuming again after a failure, and between tries of an event.
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
};
/// Events are relayed one at a time, in stream order.
const BATCHING: Batching = Batching {
    fetch: 200,
    max: 1,
    linger: Duration::ZERO,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("cannot set up the Redis connection")]
    Redis(#[source] redis::RedisError),
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Pull(#[from] PullError),
    #[error("reading the messages in flight failed")]
    InFlight(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Ack(#[from] SettleError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
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
}

/// Opens Postgres (created and migrated if needed), NATS and Redis (both retried while
/// away).
pub async fn build(config: &Config) -> Result<Relay, StartError> {
    let settings = &config.bus;
    let ca = settings.private_ca()?;
    let pool = settings.database(2).await?;
    // Lazy: the relay starts while Redis is away, and retries the event in hand.
    let redis = ConnectionManager::new_lazy_with_config(
        settings.redis(&ca)?,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2))),
    )
    .map_err(StartError::Redis)?;
    Ok(Relay {
        pool,
        jetstream: settings.jetstream(&ca).await?,
        redis,
        publisher: NotificationPublisher::new(&settings.stream),
        stream: settings.stream.clone(),
        subject_prefix: settings.subject_prefix.clone(),
        dead_letters: DeadLetterQueue::of(&settings.subject_prefix),
    })
}

impl Relay {
    /// Relays until `stop`; reconnects with backoff whatever fails. The event in hand is
    /// finished (or left unacknowledged, for redelivery) first.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut retries = retry_until(&stop, BACKOFF);
        while retries.next().await.is_some() {
            match self.consume(&stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(consumer = CONSUMER, error = %chain(&error), "relay paused; retrying")
                }
            }
        }
    }

    /// The relay's durable consumer: every event, in stream order.
    fn durable(&self) -> Durable {
        Durable {
            name: CONSUMER.to_owned(),
            filter_subject: format!("{}.>", self.subject_prefix),
            ack_wait: ACK_WAIT,
            max_ack_pending: 1000,
        }
    }

    /// Relays while this instance is the active relay: one at a time, so that a user's
    /// notifications keep the order of their events.
    async fn consume(&mut self, stop: &CancellationToken) -> Result<(), RelayError> {
        let Some(mut lease) = Lease::acquire(&self.pool, LEADERSHIP, stop).await? else {
            return Ok(());
        };
        tracing::info!(consumer = CONSUMER, "this instance is the active relay");
        let (stream, mut consumer) = self
            .durable()
            .provision(&self.jetstream, &self.stream)
            .await?;
        if !self
            .relay_in_flight(&stream, &mut consumer, &mut lease, stop)
            .await?
        {
            return Ok(());
        }
        let mut pull = Pull::start(&consumer, BATCHING).await?;
        tracing::info!(consumer = CONSUMER, "relay consuming");
        loop {
            lease.renew_if_due().await?;
            let messages = match pull.next(stop, lease.renewal_due_in()).await? {
                Next::Stopped => return Ok(()),
                Next::Idle => continue,
                Next::Batch(messages) => messages,
            };
            for message in messages {
                let sequence = stream_sequence(&message);
                if !self
                    .relay(&message.payload, sequence, Some(&message), &mut lease, stop)
                    .await?
                {
                    return Ok(());
                }
                settle::ack(&message).await?;
            }
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
        lease: &mut Lease,
        stop: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let info = consumer
            .info()
            .await
            .map_err(|e| RelayError::InFlight(Box::new(e)))?;
        let (floor, delivered) = (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
        );
        for sequence in floor + 1..=delivered {
            let message = match stream.get_raw_message(sequence).await {
                Ok(message) => message,
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
                Err(error) => return Err(RelayError::InFlight(Box::new(error))),
            };
            if !self
                .relay(&message.payload, sequence, None, lease, stop)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Relays one message; `false` when stopped before it was done (left for redelivery).
    /// While Redis or Postgres is away it is retried in place: `message`, when it came
    /// from the consumer, is kept alive meanwhile, and the lease proven before each try.
    async fn relay(
        &mut self,
        payload: &Bytes,
        stream_sequence: u64,
        message: Option<&jetstream::Message>,
        lease: &mut Lease,
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
        let mut retries = retry_until(stop, BACKOFF);
        while retries.next().await.is_some() {
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
                settle::progress(message).await;
            }
            lease.renew().await?;
        }
        Ok(false)
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
        let letter = Letter::new(CONSUMER, reason, event, stream_sequence, payload.clone());
        self.dead_letters.publish(&self.jetstream, letter).await
    }
}
