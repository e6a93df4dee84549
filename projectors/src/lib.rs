//! Keel's projector workers: they consume the JetStream stream that the command API's
//! outbox publisher fills (command -> log -> outbox -> **JetStream -> projectors** ->
//! read models, and the UI cache in Redis) and build the read models the query endpoints
//! serve. Any model can be rebuilt from the Postgres log.
//!
//! - [`config`]: flags and environment.
//! - [`projector`]: one projection's live loop (durable pull consumer, batches, retries,
//!   dead letters). [`ledger`]: exactly-once, in-order effects per stream.
//!   [`models`]: what each event changes in each model.
//! - [`rebuild`]: replay the log into a fresh model and swap it in.
//! - [`operations`]: `status`, `dead-letters list|replay`.
//! - [`dead_letter_queue`]: the `<stream>_DLQ` stream. [`cache`]: dashboard invalidation.
//! - [`tail`]: prints the stream as it arrives (an operator's window on the bus).
//! - [`build`] opens everything and returns [`Workers`], which run until stopped.

pub mod cache;
pub mod config;
pub mod dead_letter_queue;
pub mod ledger;
pub mod models;
pub mod operations;
pub mod projector;
pub mod rebuild;
pub mod tail;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cache::Cache;
pub use crate::config::Config;
use crate::dead_letter_queue::DeadLetterQueue;
use crate::projector::Projector;
use events::read_model::Projection;

/// Connections per process: one per projection's batch, plus idle checkpoints.
pub const POOL_SIZE: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Database(#[from] events::database::OpenError),
    #[error(transparent)]
    Tls(#[from] events::tls::CaFileError),
    #[error("invalid REDIS_URL")]
    Redis(#[source] redis::RedisError),
    #[error(transparent)]
    Nats(events::nats::ConnectError),
}

/// Opens the database (created and migrated if needed) and the cache.
pub async fn open(config: &Config) -> Result<(PgPool, Cache), StartError> {
    let ca = events::tls::PrivateCa::load(config.tls_ca_file.as_deref())?;
    let pool = events::database::open(
        &config.database_url,
        config.migrate_database_url.as_deref(),
        POOL_SIZE,
    )
    .await?;
    let redis = ca.redis(&config.redis_url).map_err(StartError::Redis)?;
    Ok((pool, Cache::new(redis, config.stream.clone())))
}

/// The projections of one process, ready to run.
pub struct Workers {
    projectors: Vec<Projector>,
}

/// Opens Postgres, NATS (retried in the background while it is away) and Redis, and
/// prepares a projector per projection in `projections`.
pub async fn build(config: &Config, projections: &[Projection]) -> Result<Workers, StartError> {
    let (pool, cache) = open(config).await?;
    let cache = Arc::new(cache);
    let ca = events::tls::PrivateCa::load(config.tls_ca_file.as_deref())?;
    let nats = events::nats::connect(ca.nats(), &config.nats_url, config.nats_creds.as_deref())
        .await
        .map_err(StartError::Nats)?;
    let jetstream = async_nats::jetstream::new(nats);
    let projectors = projections
        .iter()
        .map(|projection| Projector {
            projection: *projection,
            pool: pool.clone(),
            jetstream: jetstream.clone(),
            stream: config.stream.clone(),
            subject_prefix: config.subject_prefix.clone(),
            dead_letters: DeadLetterQueue::of(&config.subject_prefix),
            cache: cache.clone(),
        })
        .collect();
    Ok(Workers { projectors })
}

impl Workers {
    /// Runs every projection until `shutdown` resolves; each finishes its batch in hand.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = CancellationToken::new();
        let mut running = JoinSet::new();
        for projector in self.projectors {
            running.spawn(projector.run(stop.clone()));
        }
        shutdown.await;
        stop.cancel();
        while running.join_next().await.is_some() {}
    }
}
