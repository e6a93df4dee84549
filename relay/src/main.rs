//! `relay`: reads its configuration, relays until SIGTERM or Ctrl-C.

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Keel notification relay: the JetStream durable consumer `relay-notifications` that
/// turns `comment.added`, `post.liked` and `user.role_changed` into per-user
/// notifications on Redis channels `notify.user.<user_id>`, each also kept in that
/// user's bounded history for WebSocket recovery. Several instances may run: they share
/// the stream's partitions (`KEEL_PARTITIONS`), each owned by one instance at a time and
/// taken over within seconds when its owner dies; with one partition, one instance is
/// active and the others stand by.
#[derive(Parser)]
#[command(name = "relay", version)]
struct Cli {
    #[command(flatten)]
    config: relay::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    events::process::init_logging();
    let cli = Cli::parse();
    let relay = relay::build(&cli.config).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    events::process::shutdown_signal().await;
    stop.cancel();
    running.await?;
    Ok(())
}
