//! The notification relay: the JetStream durable consumer `relay-notifications` that turns
//! events into per-user notifications on Redis (command -> log -> outbox -> JetStream ->
//! **relay -> Redis** -> WebSocket hub).
//!
//! Events are taken in stream order, one at a time. An event that notifies someone
//! (`domain::notification::Trigger`) has its actor's name read from the event log as it
//! was at that event (the relay keeps no copy and never calls the command API), then is
//! published by the `notify` crate's script (dedup, history and channel in one step),
//! and only then acknowledged. A crash in between makes the redelivery a duplicate the
//! script drops. While Redis or Postgres is away the event is retried in place (it is
//! not the event's fault), so nothing later overtakes it; an event that cannot be read
//! at all goes to the dead-letter stream.
//!
//! Instances share the stream's partitions (`KEEL_PARTITIONS`, `bus::partitioned`): each
//! partition has one owner at a time, which relays it through its own durable consumer
//! (`relay-notifications`, or `relay-notifications-<p>` with several partitions) and
//! proves its lease before every publish. With one partition that makes one instance the
//! active relay and the others its standbys. On taking a partition over, what the
//! previous owner had received but not acknowledged is relayed first, in order.
//!
//! Order: the notifications that come from one stream (one post's comments and likes,
//! one user's role changes) reach a user in the order of that stream's events, across
//! crashes and handovers, because a stream lives in one partition. Notifications from
//! different streams are ordered as they are relayed, which with several partitions
//! may differ from the log's order; the offsets a user sees still only grow, so
//! recovery by offset stays exact.
//!
//! - [`config`]: flags and environment.

pub mod config;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bus::pull::stream_sequence;
use bus::settle::{self, SettleError};
use bus::{
    Backoff, Batching, DeadLetterError, DeadLetterQueue, Durable, InFlightError, Letter, Next,
    ProvisionError, Pull, PullError, chain, in_flight, partitioned, retry_until,
};
use bytes::Bytes;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use domain::envelope;
use domain::notification::Trigger;
use domain::recorded::RecordedEvent;
use events::event_log;
use events::lease::Fence;
use events::partitions::Partitions;
use events::settings::ConnectError;

pub use crate::config::Config;

/// The durable consumer's name.
pub const CONSUMER: &str = "relay-notifications";
/// How long JetStream waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How long the pull loop waits for a message before looking again.
const IDLE: Duration = Duration::from_secs(1);
/// Connections: the group's ticks, and each owned partition's reads and lease proofs.
const POOL_SIZE: u32 = 4;
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
    #[error(transparent)]
    InFlight(#[from] InFlightError),
    #[error(transparent)]
    Ack(#[from] SettleError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error("proving the partition's lease failed")]
    Lease(#[source] sqlx::Error),
    #[error("this instance no longer owns the partition")]
    LeaseLost,
}

#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error("reading the actor's name failed")]
    Database(#[source] sqlx::Error),
    #[error("publishing to Redis failed")]
    Redis(#[source] redis::RedisError),
}

/// The relay, ready to run.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    redis: ConnectionManager,
    publisher: notify::Publisher,
    stream: String,
    subject_prefix: String,
    partitions: Partitions,
    dead_letters: DeadLetterQueue,
}

/// The relay of one partition, while this instance owns it.
struct Owner {
    relay: Relay,
    fence: Fence,
}

/// Opens Postgres (created and migrated if needed), NATS and Redis (both retried while
/// away).
pub async fn build(config: &Config) -> Result<Relay, StartError> {
    let settings = &config.connections;
    let ca = settings.private_ca()?;
    let pool = settings.database(POOL_SIZE).await?;
    // Lazy: the relay starts while Redis is away, and retries the event in hand.
    let redis = ConnectionManager::new_lazy_with_config(
        settings.redis(&ca)?,
        redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2))),
    )
    .map_err(StartError::Redis)?;
    let jetstream = settings.jetstream(&ca).await?;
    settings.check_partitions(&jetstream).await?;
    Ok(Relay {
        pool,
        jetstream,
        redis,
        publisher: notify::Publisher::new(&settings.stream),
        stream: settings.stream.clone(),
        subject_prefix: settings.subject_prefix.clone(),
        partitions: settings.partitions,
        dead_letters: DeadLetterQueue::of(&settings.subject_prefix),
    })
}

impl Relay {
    /// Relays the partitions this instance owns until `stop`, then leaves the group. The
    /// event in hand is finished (or left unacknowledged, for redelivery) first.
    pub async fn run(self, stop: CancellationToken) {
        let member = partitioned::member(CONSUMER, self.partitions);
        let pool = self.pool.clone();
        partitioned::run(member, pool, stop, move |fence, stop| {
            Owner {
                relay: self.clone(),
                fence,
            }
            .run(stop)
        })
        .await;
    }
}

impl Owner {
    /// Relays the partition until `stop` or until it is lost; reconnects with backoff
    /// whatever else fails.
    async fn run(mut self, stop: CancellationToken) {
        let consumer = self.consumer();
        let mut retries = retry_until(&stop, BACKOFF);
        while retries.next().await.is_some() {
            match self.consume(&stop).await {
                Ok(()) => return,
                Err(RelayError::LeaseLost) => {
                    tracing::info!(%consumer, "partition lost; stopping");
                    return;
                }
                Err(error) => {
                    tracing::warn!(%consumer, error = %chain(&error), "relay paused; retrying")
                }
            }
        }
    }

    /// The durable consumer's name: `relay-notifications`, `relay-notifications-<p>` with
    /// several partitions.
    fn consumer(&self) -> String {
        if self.relay.partitions == Partitions::ONE {
            CONSUMER.to_owned()
        } else {
            format!("{CONSUMER}-{}", self.fence.partition())
        }
    }

    /// The partition's durable consumer: all its events, in stream order.
    fn durable(&self) -> Durable {
        let relay = &self.relay;
        Durable {
            name: self.consumer(),
            filter_subject: relay
                .partitions
                .filter(&relay.subject_prefix, self.fence.partition()),
            partitions: relay.partitions,
            ack_wait: ACK_WAIT,
            max_ack_pending: 1000,
        }
    }

    /// Fails unless this instance still owns the partition.
    async fn prove_lease(&self) -> Result<(), RelayError> {
        match self.fence.hold(&self.relay.pool).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(RelayError::LeaseLost),
            Err(error) => Err(RelayError::Lease(error)),
        }
    }

    /// Relays while this instance owns the partition: one at a time, so that a stream's
    /// notifications keep the order of its events.
    async fn consume(&mut self, stop: &CancellationToken) -> Result<(), RelayError> {
        let (stream, mut consumer) = self
            .durable()
            .provision(&self.relay.jetstream, &self.relay.stream)
            .await?;
        if !self.relay_in_flight(&stream, &mut consumer, stop).await? {
            return Ok(());
        }
        let mut pull = Pull::start(&consumer, BATCHING).await?;
        tracing::info!(consumer = %self.consumer(), "relay consuming");
        loop {
            let messages = match pull.next(stop, IDLE).await? {
                Next::Stopped => {
                    pull.hand_back().await;
                    return Ok(());
                }
                Next::Idle => continue,
                Next::Batch(messages) => messages,
            };
            for message in messages {
                let sequence = stream_sequence(&message);
                if !self
                    .relay(&message.payload, sequence, Some(&message), stop)
                    .await?
                {
                    return Ok(());
                }
                settle::ack(&message).await?;
            }
        }
    }

    /// Relays, in order and before anything newer, what an earlier owner received but
    /// did not acknowledge (`bus::in_flight`); when JetStream redelivers those later, they
    /// are duplicates and dropped.
    async fn relay_in_flight(
        &mut self,
        stream: &jetstream::stream::Stream,
        consumer: &mut consumer::PullConsumer,
        stop: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let missed = in_flight(
            stream,
            consumer,
            self.relay.partitions,
            self.fence.partition(),
        )
        .await?;
        for (sequence, payload) in missed {
            if !self.relay(&payload, sequence, None, stop).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Relays one message; `false` when stopped before it was done (left for redelivery).
    /// While Redis or Postgres is away it is retried in place: `message`, when it came
    /// from the consumer, is kept alive meanwhile. The lease is proven before each try.
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
        let mut retries = retry_until(stop, BACKOFF);
        while retries.next().await.is_some() {
            self.prove_lease().await?;
            match self.deliver(&event, trigger.clone()).await {
                Ok(()) => return Ok(true),
                Err(error) => tracing::warn!(
                    consumer = %self.consumer(),
                    position = event.position.0,
                    error = %chain(&error),
                    "notification not relayed yet; retrying"
                ),
            }
            // Still working on it: JetStream must not hand it out again meanwhile.
            if let Some(message) = message {
                settle::progress(message).await;
            }
        }
        Ok(false)
    }

    async fn deliver(
        &mut self,
        event: &RecordedEvent,
        trigger: Trigger,
    ) -> Result<(), DeliverError> {
        let relay = &mut self.relay;
        let name = match trigger.actor() {
            Some(actor) => event_log::user_name_before(&relay.pool, actor, event.position)
                .await
                .map_err(DeliverError::Database)?,
            None => None,
        };
        let addressed = trigger.address(event, name);
        let offset = relay
            .publisher
            .publish(&mut relay.redis, &addressed, event.position)
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
        let consumer = self.consumer();
        tracing::error!(%consumer, reason, "event cannot be relayed; dead-lettered");
        let letter = Letter::new(&consumer, reason, event, stream_sequence, payload.clone());
        self.relay
            .dead_letters
            .publish(&self.relay.jetstream, letter)
            .await
    }
}
