//! The projectors' configuration: read once in `main`, from flags or the environment.

use std::path::PathBuf;

use clap::Args;

/// Where the projectors (and the relay) read from and write to.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Postgres: the event log (read) and the read models (written). Created and migrated
    /// on start if missing.
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

    /// NATS with JetStream.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,

    /// Redis: the UI cache the projectors invalidate, the relay's notification channels.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    pub redis_url: String,

    /// PEM file of the private CA that the Redis (`rediss://`) and NATS (`tls://`)
    /// servers' certificates chain to. Unset: the system's CAs.
    #[arg(long, env = "KEEL_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,

    /// JetStream stream name (its dead-letter stream is `<name>_DLQ`).
    #[arg(long, env = "KEEL_STREAM", default_value = "EVENTS", global = true)]
    pub stream: String,

    /// Subject prefix: events arrive on `<prefix>.<type>`.
    #[arg(
        long,
        env = "KEEL_SUBJECT_PREFIX",
        default_value = "events",
        global = true
    )]
    pub subject_prefix: String,
}
