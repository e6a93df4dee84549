//! `keel-bench`: Keel's figures beside the machine's own limits, measured in one run.
//!
//! - `append`: HTTP commands/s and latency vs pgbench's one-row INSERT TPS.
//! - `publish`: outbox drain events/s vs a bare async-nats JetStream publisher, and
//!   commit-to-bus latency at a steady command rate.
//! - `project`: live projection events/s from a JetStream backlog vs a bare pull consumer;
//!   rebuild events/s from the log vs a bare keyset scan.

mod append;
mod project;
mod publish;

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(name = "keel-bench")]
enum Cli {
    /// HTTP commands/s and latency vs pgbench one-row INSERT TPS.
    Append {
        #[arg(long, default_value = "32")]
        clients: usize,
        #[arg(long, default_value = "10")]
        seconds: u64,
    },
    /// Outbox drain rate vs a bare JetStream publisher; commit-to-bus latency.
    Publish {
        /// Events pre-filled in the log and drained.
        #[arg(long, default_value = "100000")]
        events: usize,
        /// Commands per second for the latency run.
        #[arg(long, default_value = "500")]
        rate: u32,
        #[arg(long, default_value = "10")]
        seconds: u64,
    },
    /// Projection rate from a JetStream backlog; rebuild rate from the log.
    Project {
        /// Events in the JetStream backlog the `posts` and `authors` projections apply.
        #[arg(long, default_value = "100000")]
        events: usize,
        /// Events in the log the `posts` model is rebuilt from.
        #[arg(long, default_value = "1000000")]
        rebuild_events: usize,
    },
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Append { clients, seconds } => append::run(clients, seconds).await,
        Cli::Publish {
            events,
            rate,
            seconds,
        } => publish::run(events, rate, seconds).await,
        Cli::Project {
            events,
            rebuild_events,
        } => project::run(events, rebuild_events).await,
    }
}
