//! Keel's projector workers: they consume the JetStream stream that the command API's
//! outbox publisher fills (command -> log -> outbox -> **JetStream -> projectors** ->
//! read models, and the UI cache in Redis) and build the read models the query endpoints
//! serve. Any model can be rebuilt from the Postgres log. The consumer plumbing (durable
//! consumer, batches, settling, retries, dead letters) is the `bus` crate's.
//!
//! - [`config`]: flags and environment.
//! - [`projector`]: one projection's live loop: a batch in one transaction, an event that
//!   keeps failing dead-lettered. [`ledger`]: exactly-once, in-order effects per stream.
//!   [`models`]: what each event changes in each model.
//! - [`rebuild`]: replay the log into a fresh model and swap it in.
//! - [`operations`]: `status`, `dead-letters list|replay`.
//! - [`ui_cache`]: dashboard invalidation and policy announcements in Redis.
//! - [`tail`]: prints the stream as it arrives (an operator's window on the bus).
//! - [`build`] opens everything and returns [`Workers`], which run until stopped. With
//!   several partitions (`KEEL_PARTITIONS`), each projection's instances share them: the
//!   instance runs a loop per partition it owns (`bus::partitioned`).

pub mod config;
pub mod ledger;
pub mod models;
pub mod operations;
pub mod projector;
pub mod rebuild;
pub mod tail;
pub mod ui_cache;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::projector::Projector;
use crate::ui_cache::UiCache;
use bus::{DeadLetterQueue, partitioned};
use events::partitions::Partitions;
use events::read_model::Projection;
use events::settings::ConnectError;
use events::tls::PrivateCa;

/// Connections per process: one per projection's batch, plus idle checkpoints.
pub const POOL_SIZE: u32 = 8;

/// Opens the database (created and migrated if needed) and the cache.
pub async fn open(config: &Config) -> Result<(PgPool, UiCache), ConnectError> {
    open_with(config, &config.connections.private_ca()?).await
}

async fn open_with(config: &Config, ca: &PrivateCa) -> Result<(PgPool, UiCache), ConnectError> {
    let settings = &config.connections;
    let pool = settings.database(POOL_SIZE).await?;
    let redis = settings.redis(ca)?;
    Ok((pool, UiCache::new(redis, settings.stream.clone())))
}

/// The projections of one process, ready to run.
pub struct Workers {
    projectors: Vec<Projector>,
    pool: PgPool,
}

/// Opens Postgres, NATS (retried in the background while it is away) and Redis, and
/// prepares a projector per projection in `projections`.
pub async fn build(config: &Config, projections: &[Projection]) -> Result<Workers, ConnectError> {
    let settings = &config.connections;
    let ca = settings.private_ca()?;
    let (pool, cache) = open_with(config, &ca).await?;
    let cache = Arc::new(cache);
    let jetstream = settings.jetstream(&ca).await?;
    settings.check_partitions(&jetstream).await?;
    let projectors = projections
        .iter()
        .map(|projection| Projector {
            projection: *projection,
            pool: pool.clone(),
            jetstream: jetstream.clone(),
            stream: settings.stream.clone(),
            subject_prefix: settings.subject_prefix.clone(),
            dead_letters: DeadLetterQueue::of(&settings.subject_prefix),
            cache: cache.clone(),
            partitions: settings.partitions,
            partition: None,
        })
        .collect();
    Ok(Workers { projectors, pool })
}

impl Workers {
    /// Runs every projection until `shutdown` resolves; each finishes its batch in hand.
    pub async fn run_until_stopped(self, shutdown: impl std::future::Future<Output = ()>) {
        let stop = CancellationToken::new();
        let mut running = JoinSet::new();
        for projector in self.projectors {
            if projector.partitions == Partitions::ONE {
                running.spawn(projector.run(stop.clone()));
                continue;
            }
            let member =
                partitioned::member(&projector.projection.consumer(), projector.partitions);
            running.spawn(partitioned::run(
                member,
                self.pool.clone(),
                stop.clone(),
                move |fence, stop| {
                    let partition = Projector {
                        partition: Some(fence),
                        ..projector.clone()
                    };
                    partition.run(stop)
                },
            ));
        }
        shutdown.await;
        stop.cancel();
        while running.join_next().await.is_some() {}
    }
}
