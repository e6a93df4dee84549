//! `keel-bench`: Keel's figures beside the machine's own limits, measured in one run.
//!
//! - `append`: HTTP commands/s and latency vs pgbench's one-row INSERT TPS.
//! - `publish`: outbox drain events/s vs a bare async-nats JetStream publisher, and
//!   commit-to-bus latency at a steady command rate.
//! - `project`: live projection events/s from a JetStream backlog vs a bare pull consumer;
//!   rebuild events/s from the log vs a bare keyset scan.
//! - `fanout`: notifications delivered/s and latency to thousands of WebSocket clients vs
//!   `redis-benchmark`'s bare PUBLISH rate and the relay's script alone.
//! - `e2e`: command accepted -> WebSocket frame latency at a steady command rate.

mod append;
mod cpu;
mod e2e;
mod fanout;
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
    /// Notifications to many WebSocket clients (one command API) vs bare Redis PUBLISH.
    Fanout {
        /// Sockets, each its own user [default: 5000; --quick: 500].
        #[arg(long)]
        sockets: Option<usize>,
        /// Notifications per second, to random users [default: 5000; --quick: 1000].
        #[arg(long)]
        rate: Option<u32>,
        /// Seconds of publishing [default: 10; --quick: 3].
        #[arg(long)]
        seconds: Option<u64>,
        /// Concurrent publisher tasks, each with its own Redis connection.
        #[arg(long, default_value = "4")]
        publishers: usize,
        /// Sockets opened at once.
        #[arg(long, default_value = "200")]
        connect_concurrency: usize,
        /// Also time send -> a bare Redis pattern subscriber in the bench.
        #[arg(long)]
        probe: bool,
        /// Set TCP_QUICKACK on every client socket after every read (a diagnostic).
        #[arg(long)]
        client_quickack: bool,
        /// Smaller defaults, for a quick look.
        #[arg(long)]
        quick: bool,
    },
    /// Command accepted -> WebSocket frame, at a steady comment rate.
    E2e {
        /// Comments per second, all commenters together [default: 200; --quick: 100].
        #[arg(long)]
        rate: Option<u32>,
        /// Seconds of commenting [default: 20; --quick: 3].
        #[arg(long)]
        seconds: Option<u64>,
        /// Registered users who comment, in turn.
        #[arg(long, default_value = "20")]
        commenters: usize,
        /// Set TCP_QUICKACK on the author's socket after every read (a diagnostic).
        #[arg(long)]
        client_quickack: bool,
        /// Smaller defaults, for a quick look.
        #[arg(long)]
        quick: bool,
    },
}

/// `value` if given, else the default of a full or a `--quick` run.
fn sized<T>(value: Option<T>, quick: bool, full: T, small: T) -> T {
    value.unwrap_or(if quick { small } else { full })
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
        Cli::Fanout {
            sockets,
            rate,
            seconds,
            publishers,
            connect_concurrency,
            probe,
            client_quickack,
            quick,
        } => {
            fanout::run(fanout::Options {
                sockets: sized(sockets, quick, 5000, 500),
                rate: sized(rate, quick, 5000, 1000),
                seconds: sized(seconds, quick, 10, 3),
                publishers,
                connect_concurrency,
                probe,
                quickack: client_quickack,
            })
            .await
        }
        Cli::E2e {
            rate,
            seconds,
            commenters,
            client_quickack,
            quick,
        } => {
            e2e::run(e2e::Options {
                rate: sized(rate, quick, 200, 100),
                seconds: sized(seconds, quick, 20, 3),
                commenters,
                quickack: client_quickack,
            })
            .await
        }
    }
}
