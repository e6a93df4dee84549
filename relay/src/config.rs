//! The relay's configuration: read once in `main`, from flags or the environment.

use clap::Args;

/// What the relay runs against: the connection settings every worker shares.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub connections: events::settings::Settings,
}
