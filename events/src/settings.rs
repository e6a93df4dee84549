//! Where every Keel process reads and writes (Postgres, NATS, Redis, the stream), read once
//! in `main`, and opening each: the same flags and environment variables in command-api,
//! `command-api publisher`, the projectors and the relay.

use std::path::PathBuf;

use crate::partitions::Partitions;
use crate::tls::PrivateCa;
use async_nats::jetstream;
use clap::Args;
use sqlx::PgPool;

/// Where a process reads from and writes to. Each binary's `Config` flattens it (a
/// process that needs no Redis, the publisher, ignores `REDIS_URL`).
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres: the event log, the outbox and the read models. The database is created
    /// and migrated at start if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/keel",
        global = true
    )]
    pub database_url: String,

    /// Postgres as the schema's owner. Set: migrations run through it at start, all else
    /// through `DATABASE_URL`, which then needs only the rights `scripts/postgres-roles.sql`
    /// grants. Unset: `DATABASE_URL` migrates.
    #[arg(
        long,
        env = "KEEL_MIGRATE_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub migrate_database_url: Option<String>,

    /// NATS with JetStream; `user:password@` in the URL authenticates.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true,
        hide_env_values = true
    )]
    pub nats_url: String,

    /// A NATS creds file (user JWT and nkey seed) to authenticate with instead.
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,

    /// Redis: the notification channels and history, the UI cache, socket tickets;
    /// `user:password@` selects the ACL user.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true,
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM file of the private CA that the Redis (`rediss://`) and NATS (`tls://`)
    /// servers' certificates chain to. Unset: the system's CAs.
    #[arg(long, env = "KEEL_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,

    /// JetStream stream name (its dead-letter stream is `<name>_DLQ`).
    #[arg(long, env = "KEEL_STREAM", default_value = "EVENTS", global = true)]
    pub stream: String,

    /// Subject prefix: events go to `<prefix>.<type>` (`<prefix>.<type>.<partition>` with
    /// several partitions).
    #[arg(
        long,
        env = "KEEL_SUBJECT_PREFIX",
        default_value = "events",
        global = true
    )]
    pub subject_prefix: String,

    /// Partitions of the stream, 1 to 64: an event's is `fnv1a64(stream id) mod P`, the
    /// last token of its subject when P > 1, and the instances of a worker share them.
    /// Fixed for the stream's life: a stream made with another count refuses the start.
    #[arg(long, env = "KEEL_PARTITIONS", default_value = "1", global = true)]
    pub partitions: Partitions,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Database(#[from] crate::database::OpenError),
    #[error(transparent)]
    Tls(#[from] crate::tls::CaFileError),
    #[error("invalid REDIS_URL")]
    Redis(#[source] redis::RedisError),
    #[error(transparent)]
    Nats(crate::nats::ConnectError),
    #[error(
        "JetStream stream {stream} has {recorded} partition(s) and KEEL_PARTITIONS is {configured} (partitions are fixed for a stream's life)"
    )]
    Partitions {
        stream: String,
        recorded: Partitions,
        configured: Partitions,
    },
}

impl Settings {
    /// The private CA of `KEEL_TLS_CA_FILE` (unset: the system's CAs), read now so that a
    /// missing file stops the start.
    pub fn private_ca(&self) -> Result<PrivateCa, ConnectError> {
        Ok(PrivateCa::load(self.tls_ca_file.as_deref())?)
    }

    /// Opens Postgres with `pool_size` connections, creating and migrating the database
    /// if needed.
    pub async fn database(&self, pool_size: u32) -> Result<PgPool, ConnectError> {
        Ok(crate::database::open(
            &self.database_url,
            self.migrate_database_url.as_deref(),
            pool_size,
        )
        .await?)
    }

    /// Connects to NATS (retried in the background while it is away) for JetStream.
    pub async fn jetstream(&self, ca: &PrivateCa) -> Result<jetstream::Context, ConnectError> {
        let nats = crate::nats::connect(ca.nats(), &self.nats_url, self.nats_creds.as_deref())
            .await
            .map_err(ConnectError::Nats)?;
        Ok(jetstream::new(nats))
    }

    /// A consumer's start: fails if the stream exists already with other partitions than
    /// configured (waiting a few seconds at most when NATS is away). Publishers check
    /// when they provision the stream (`publisher::EventStream`), so they do not call it.
    pub async fn check_partitions(&self, context: &jetstream::Context) -> Result<(), ConnectError> {
        match recorded_partitions(context, &self.stream).await {
            Some(recorded) if recorded != self.partitions => Err(ConnectError::Partitions {
                stream: self.stream.clone(),
                recorded,
                configured: self.partitions,
            }),
            _ => Ok(()),
        }
    }

    /// A Redis client (it connects when first used).
    pub fn redis(&self, ca: &PrivateCa) -> Result<redis::Client, ConnectError> {
        ca.redis(&self.redis_url).map_err(ConnectError::Redis)
    }
}

/// The partitions the stream records, when it can be read now (it may not exist yet, or
/// NATS may be away: the durable consumers check again when they start).
pub async fn recorded_partitions(context: &jetstream::Context, stream: &str) -> Option<Partitions> {
    let info = tokio::time::timeout(CHECK_TIMEOUT, context.get_stream(stream))
        .await
        .ok()?
        .ok()?;
    Partitions::recorded(info.cached_info().config.description.as_deref()).ok()
}

/// How long the start waits to read the stream's partitions.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
