//! `projectors`: Keel's projector workers (read models arrive with the projectors issue)
//! and `projectors tail`, which prints the event stream.

use std::time::Duration;

use clap::{Parser, Subcommand};

/// Keel projector workers: JetStream durable consumers (`projector-<name>`) that build the
/// read models `users`, `authors`, `posts` and `dashboard`, and rebuild any of them by
/// replaying the Postgres log. Today only `tail` is built.
#[derive(Parser)]
#[command(name = "projectors", version)]
struct Cli {
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    #[arg(long, env = "KEEL_STREAM", default_value = "EVENTS", global = true)]
    stream: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Tail { count, idle_secs } => {
            projectors::tail::run(
                &cli.nats_url,
                &cli.stream,
                count,
                Duration::from_secs(idle_secs),
            )
            .await?;
        }
    }
    Ok(())
}
