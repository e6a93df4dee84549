//! The projectors' configuration: read once in `main`, from flags or the environment.

use clap::Args;

/// What the projectors run against: the connection settings every worker shares.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub connections: events::settings::Settings,
}
