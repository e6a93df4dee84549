//! The publisher's own process (`command-api publisher`): its flags and environment,
//! read once in `main`.

use std::path::PathBuf;

use clap::Parser;

/// Runs only the outbox publisher (the Postgres log -> JetStream), without HTTP listeners,
/// until SIGTERM or Ctrl-C. Run it beside command-api instances started with
/// `--no-publisher`; several may run at once, one active at a time.
#[derive(Debug, Clone, Parser)]
#[command(name = "command-api publisher", bin_name = "command-api publisher")]
pub struct Config {
    /// Postgres: the event log and the outbox checkpoint. The database is created if
    /// missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/keel"
    )]
    pub database_url: String,

    /// Postgres as the schema's owner. Set: migrations run through it at start, all else
    /// through `DATABASE_URL`. Unset: `DATABASE_URL` migrates.
    #[arg(long, env = "KEEL_MIGRATE_DATABASE_URL", hide_env_values = true)]
    pub migrate_database_url: Option<String>,

    /// NATS with JetStream; `user:password@` in the URL authenticates.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,

    /// A NATS creds file (user JWT and nkey seed) to authenticate with instead.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// PEM file of the private CA that the NATS (`tls://`) server's certificate chains
    /// to. Unset: the system's CAs.
    #[arg(long, env = "KEEL_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,

    /// JetStream stream name.
    #[arg(long, env = "KEEL_STREAM", default_value = "EVENTS")]
    pub stream: String,

    /// Subject prefix: events go to `<prefix>.<type>` (`<prefix>.<type>.<partition>` with
    /// several partitions).
    #[arg(long, env = "KEEL_SUBJECT_PREFIX", default_value = "events")]
    pub subject_prefix: String,

    /// JetStream replicas of the stream and its dead-letter stream: 1, or 3 on a
    /// cluster (a running stream is moved to the new count).
    #[arg(long, env = "KEEL_STREAM_REPLICAS", default_value = "1", value_parser = crate::stream::parse_replicas)]
    pub stream_replicas: usize,

    /// Partitions of the stream, 1 to 64: an event's is `fnv1a64(stream id) mod P`,
    /// the last token of its subject when P > 1. Fixed for the stream's life: a stream
    /// made with another count refuses the start.
    #[arg(long, env = "KEEL_PARTITIONS", default_value = "1")]
    pub partitions: events::partitions::Partitions,
}
