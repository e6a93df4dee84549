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
//! - `scale`: 1 vs 2 projector instances over 8 partitions, 3 hubs each receiving only
//!   its users' share, and publishing to R1 vs R3 on a 3-node JetStream cluster.

mod append;
mod cpu;
mod e2e;
mod fanout;
mod project;
mod publish;
mod report;
mod scale;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::report::Figure;

/// Keel's benchmarks, each beside the machine's own limit measured in the same run.
/// Without a scenario, runs every one and prints one table (also written as JSON).
#[derive(Parser)]
#[command(name = "keel-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Small sizes: every scenario in about two minutes (figures to look at, not to
    /// compare with full runs).
    #[arg(long, global = true)]
    quick: bool,
    /// Where the figures are written as JSON.
    #[arg(long, global = true, default_value = "target/bench/results.json")]
    json: PathBuf,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// HTTP commands/s and latency vs pgbench one-row INSERT TPS.
    Append {
        #[arg(long, default_value = "32")]
        clients: usize,
        /// Seconds of each run [default: 10; --quick: 3].
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Outbox drain rate vs a bare JetStream publisher; commit-to-bus latency.
    Publish {
        /// Events pre-filled in the log and drained [default: 100000; --quick: 10000].
        #[arg(long)]
        events: Option<usize>,
        /// Commands per second for the latency run [default: 500; --quick: 200].
        #[arg(long)]
        rate: Option<u32>,
        /// Seconds of the latency run [default: 10; --quick: 3].
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Projection rate from a JetStream backlog; rebuild rate from the log.
    Project {
        /// Events in the JetStream backlog the `posts` and `authors` projections apply
        /// [default: 100000; --quick: 10000].
        #[arg(long)]
        events: Option<usize>,
        /// Events in the log the `posts` model is rebuilt from [default: 1000000;
        /// --quick: 50000].
        #[arg(long)]
        rebuild_events: Option<usize>,
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
    },
    /// 1 vs 2 projector instances over 8 partitions; 3 hubs and their shares; R1 vs R3.
    Scale {
        /// Events in the backlog the projectors apply [default: 50000; --quick: 5000].
        #[arg(long)]
        events: Option<usize>,
        /// Sockets on each of the 3 hubs [default: 300; --quick: 50].
        #[arg(long)]
        sockets_per_hub: Option<usize>,
        /// Notifications to random users, half of them offline [default: 6000; --quick: 600].
        #[arg(long)]
        notifications: Option<usize>,
        /// Events drained into each of the R1 and R3 streams [default: 20000; --quick: 3000].
        #[arg(long)]
        drain_events: Option<usize>,
    },
}

impl Scenario {
    /// Every scenario, with its default (or `--quick`) sizes.
    fn all() -> Vec<Scenario> {
        vec![
            Scenario::Append {
                clients: 32,
                seconds: None,
            },
            Scenario::Publish {
                events: None,
                rate: None,
                seconds: None,
            },
            Scenario::Project {
                events: None,
                rebuild_events: None,
            },
            Scenario::Fanout {
                sockets: None,
                rate: None,
                seconds: None,
                publishers: 4,
                connect_concurrency: 200,
                probe: false,
                client_quickack: false,
            },
            Scenario::E2e {
                rate: None,
                seconds: None,
                commenters: 20,
                client_quickack: false,
            },
            Scenario::Scale {
                events: None,
                sockets_per_hub: None,
                notifications: None,
                drain_events: None,
            },
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            Scenario::Append { .. } => "append",
            Scenario::Publish { .. } => "publish",
            Scenario::Project { .. } => "project",
            Scenario::Fanout { .. } => "fanout",
            Scenario::E2e { .. } => "e2e",
            Scenario::Scale { .. } => "scale",
        }
    }

    async fn run(self, quick: bool) -> anyhow::Result<Vec<Figure>> {
        match self {
            Scenario::Append { clients, seconds } => {
                append::run(clients, sized(seconds, quick, 10, 3)).await
            }
            Scenario::Publish {
                events,
                rate,
                seconds,
            } => {
                publish::run(
                    sized(events, quick, 100_000, 10_000),
                    sized(rate, quick, 500, 200),
                    sized(seconds, quick, 10, 3),
                )
                .await
            }
            Scenario::Project {
                events,
                rebuild_events,
            } => {
                project::run(
                    sized(events, quick, 100_000, 10_000),
                    sized(rebuild_events, quick, 1_000_000, 50_000),
                )
                .await
            }
            Scenario::Fanout {
                sockets,
                rate,
                seconds,
                publishers,
                connect_concurrency,
                probe,
                client_quickack,
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
            Scenario::E2e {
                rate,
                seconds,
                commenters,
                client_quickack,
            } => {
                e2e::run(e2e::Options {
                    rate: sized(rate, quick, 200, 100),
                    seconds: sized(seconds, quick, 20, 3),
                    commenters,
                    quickack: client_quickack,
                })
                .await
            }
            Scenario::Scale {
                events,
                sockets_per_hub,
                notifications,
                drain_events,
            } => {
                scale::run(scale::Options {
                    events: sized(events, quick, 50_000, 5_000),
                    sockets_per_hub: sized(sockets_per_hub, quick, 300, 50),
                    notifications: sized(notifications, quick, 6_000, 600),
                    drain_events: sized(drain_events, quick, 20_000, 3_000),
                })
                .await
            }
        }
    }
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
    let cli = Cli::parse();
    let scenarios = cli.scenario.map_or_else(Scenario::all, |one| vec![one]);
    let mut figures = Vec::new();
    for scenario in scenarios {
        let name = scenario.name();
        println!("\n== {name}{}", if cli.quick { " (--quick)" } else { "" });
        match scenario.run(cli.quick).await {
            Ok(mut found) => figures.append(&mut found),
            Err(error) => {
                eprintln!("{name} failed: {error:#}");
                figures.push(Figure::failed(name));
            }
        }
    }
    report::publish(&figures, &cli.json)
}
