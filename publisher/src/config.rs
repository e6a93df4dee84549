//! The publisher's own process (`command-api publisher`): its flags and environment,
//! read once in `main`.

use clap::Parser;

/// Runs only the outbox publisher (the Postgres log -> JetStream), without HTTP listeners,
/// until SIGTERM or Ctrl-C. Run it beside command-api instances started with
/// `--no-publisher`; several may run at once, one active at a time.
#[derive(Debug, Clone, Parser)]
#[command(name = "command-api publisher", bin_name = "command-api publisher")]
pub struct Config {
    /// Postgres, NATS and the stream, as in every Keel process (`REDIS_URL` is not used).
    #[command(flatten)]
    pub connections: events::settings::Settings,

    /// JetStream replicas of the stream and its dead-letter stream: 1, or 3 on a
    /// cluster (a running stream is moved to the new count).
    #[arg(long, env = "KEEL_STREAM_REPLICAS", default_value = "1", value_parser = crate::stream::parse_replicas)]
    pub stream_replicas: usize,
}
