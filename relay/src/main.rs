//! `relay`: turns events into per-user notifications on Redis `notify.user.<id>`.
//!
//! Not built yet (the notifications issue): today it only describes itself.

use clap::Parser;

/// Keel notification relay: the JetStream durable consumer `relay-notifications` that turns
/// events into per-user notifications on Redis channels `notify.user.<user_id>`.
/// Not built yet: this binary only prints its help.
#[derive(Parser)]
#[command(name = "relay", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("the relay is not built yet; see README.md (Status)")
}
