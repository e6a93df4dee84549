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

use events::settings::ConnectError;

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
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// The publisher as its own process: opens (and migrates) the database, connects to NATS
/// and provisions the streams. An incompatible stream stops the start; an unreachable
/// NATS does not (the publisher retries). Nothing publishes until
/// [`Publisher::run_until_stopped`].
pub async fn build(config: &Config) -> Result<Publisher, StartError> {
    let connections = &config.connections;
    let ca = connections.private_ca()?;
    let pool = connections.database(POOL_SIZE).await?;
    let jetstream = connections.jetstream(&ca).await?;
    let stream = EventStream::of(connections, config.stream_replicas);
    stream.provision(&jetstream).await?;
    Ok(Publisher {
        pool,
        database_url: connections.database_url.clone(),
        jetstream,
        stream,
        progress: Arc::new(Progress::default()),
    })
}
