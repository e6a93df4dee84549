//! `projectors`: JetStream durable consumers that build Keel's read models.
//!
//! Not built yet (the projectors issue): today it only describes itself.

use clap::Parser;

/// Keel projector workers: JetStream durable consumers (`projector-<name>`) that build the
/// read models `users`, `authors`, `posts` and `dashboard`, and rebuild any of them by
/// replaying the Postgres log. Not built yet: this binary only prints its help.
#[derive(Parser)]
#[command(name = "projectors", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("projectors are not built yet; see README.md (Status)")
}
