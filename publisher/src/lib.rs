//! The outbox publisher: the stage that moves committed events from the log to the bus.
//!
//! Pipeline: command-api -> event log (Postgres, which is also the outbox) ->
//! **publisher** -> JetStream -> projectors / relay -> Redis -> WebSocket. Every committed
//! event reaches the stream once, in log order, with one active publisher among all
//! instances. It runs inside every `command-api` (unless `--no-publisher`), or as its own
//! process, `command-api publisher` ([`build`] from a [`Config`]).
//!
//! - [`outbox_publisher`]: leader election, pipelined in-order publishing, resume from
//!   the stream's last message, operators' republish requests.
//! - [`stream`]: the event stream and its dead-letter stream, provisioned and checked.
//! - [`message`]: one event as a CloudEvent message with its dedup and ordering headers.
//! - [`progress`]: whether this instance leads and what it published, for the host's
//!   metrics.
//! - [`config`]: the publisher's own process's flags and environment.

pub mod config;
pub mod message;
pub mod outbox_publisher;
pub mod progress;
pub mod stream;

use std::sync::Arc;

pub use config::Config;
pub use outbox_publisher::Publisher;
pub use progress::Progress;
pub use stream::{EventStream, StreamError};

/// Postgres connections of the publisher's own process: it reads one batch at a time
/// (its leader lock and wake-up listener have connections of their own).
const POOL_SIZE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] events::database::OpenError),
    #[error(transparent)]
    Tls(#[from] events::tls::CaFileError),
    #[error(transparent)]
    Nats(events::nats::ConnectError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// The publisher as its own process: opens (and migrates) the database, connects to NATS
/// and provisions the streams. An incompatible stream stops the start; an unreachable
/// NATS does not (the publisher retries). Nothing publishes until
/// [`Publisher::run_until_stopped`].
pub async fn build(config: &Config) -> Result<Publisher, StartError> {
    let ca = events::tls::PrivateCa::load(config.tls_ca_file.as_deref())?;
    let pool = events::database::open(
        &config.database_url,
        config.migrate_database_url.as_deref(),
        POOL_SIZE,
    )
    .await?;
    let nats = events::nats::connect(ca.nats(), &config.nats_url, config.nats_creds.as_deref())
        .await
        .map_err(StartError::Nats)?;
    let jetstream = async_nats::jetstream::new(nats);
    let stream = EventStream {
        name: config.stream.clone(),
        subject_prefix: config.subject_prefix.clone(),
        replicas: config.stream_replicas,
        partitions: config.partitions,
    };
    stream.provision(&jetstream).await?;
    Ok(Publisher {
        pool,
        database_url: config.database_url.clone(),
        jetstream,
        stream,
        progress: Arc::new(Progress::default()),
    })
}
