//! `projectors`: runs the projections (the default), or an operator's command: `rebuild`,
//! `status`, `dead-letters`, `tail`.

use std::time::Duration;

use clap::{Parser, Subcommand};

use events::read_model::Projection;
use projectors::Config;

/// Keel projector workers: JetStream durable consumers (`projector-<name>`) that build the
/// read models `users`, `authors`, `posts` and `dashboard` in Postgres and keep the
/// dashboard cache in Redis fresh. Without a command, runs every projection until SIGTERM
/// or Ctrl-C.
#[derive(Parser)]
#[command(name = "projectors", version)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run projections (all by default) until SIGTERM or Ctrl-C.
    Run {
        /// Only these projections (comma-separated).
        #[arg(long, value_delimiter = ',')]
        only: Vec<Projection>,
    },
    /// Replay the Postgres log into a fresh copy of a model and swap it in atomically
    /// (the live projector and the API keep running).
    Rebuild {
        /// users, authors, posts or dashboard.
        name: Projection,
    },
    /// One line per projection: position, log head, lag and dead letters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Show or re-drive events that kept failing.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Print the event stream from its start: one line per CloudEvent.
    Tail {
        /// Stop after this many messages.
        #[arg(long, default_value_t = usize::MAX)]
        count: usize,
        /// Stop when nothing arrives for this many seconds.
        #[arg(long, default_value = "5")]
        idle_secs: u64,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// One line per dead letter (`--json` for JSON).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Apply the dead letters again (after the cause was fixed); those that still fail stay.
    Replay {
        /// Only this projection's.
        #[arg(long)]
        projection: Option<Projection>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    events::process::init_logging();
    let cli = Cli::parse();
    let config = cli.config;
    match cli.command.unwrap_or(Command::Run { only: vec![] }) {
        Command::Run { only } => {
            let projections = if only.is_empty() {
                Projection::ALL.to_vec()
            } else {
                only
            };
            let workers = projectors::build(&config, &projections).await?;
            workers
                .run_until_stopped(events::process::shutdown_signal())
                .await;
        }
        Command::Rebuild { name } => {
            let (pool, cache) = projectors::open(&config).await?;
            let started = std::time::Instant::now();
            let rebuilt = projectors::rebuild::rebuild(&pool, name, &cache).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{name} rebuilt: {} events applied, {} dead letters, position={}, {:.1} s ({:.0} events/s)",
                rebuilt.events,
                rebuilt.dead_letters,
                rebuilt.position,
                seconds,
                rebuilt.events as f64 / seconds.max(1e-9)
            );
        }
        Command::Status { json } => {
            let (pool, _) = projectors::open(&config).await?;
            let lines = projectors::operations::status(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&lines)?);
            } else {
                lines.iter().for_each(|line| println!("{line}"));
            }
        }
        Command::DeadLetters { action } => {
            let (pool, cache) = projectors::open(&config).await?;
            match action {
                DeadLetterAction::List { json } => {
                    let letters =
                        projectors::operations::dead_letters(&pool, &Projection::ALL).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&letters)?);
                    } else {
                        letters.iter().for_each(|letter| println!("{letter}"));
                    }
                }
                DeadLetterAction::Replay { projection } => {
                    let projections = projection.map_or(Projection::ALL.to_vec(), |p| vec![p]);
                    let replayed =
                        projectors::operations::replay_dead_letters(&pool, &projections, &cache)
                            .await?;
                    println!(
                        "replayed: {} applied, {} still failing",
                        replayed.applied, replayed.still_failing
                    );
                }
            }
        }
        Command::Tail { count, idle_secs } => {
            projectors::tail::run(&config.connections, count, Duration::from_secs(idle_secs))
                .await?;
        }
    }
    Ok(())
}
