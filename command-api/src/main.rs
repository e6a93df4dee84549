//! `command-api`: reads its configuration, serves (and publishes the outbox, unless
//! `--no-publisher`) until SIGTERM or Ctrl-C.
//! `command-api publisher`: runs only the outbox publisher, until SIGTERM or Ctrl-C.
//! `command-api republish --from <position>`: asks the active publisher to publish the
//! log again from that position (after JetStream lost data).
//! `command-api migrate`: brings the schema up to date, as its owner, and exits.

use clap::Parser;
use command_api::Config;

/// Asks the running publisher to publish the Postgres log to JetStream again, from a
/// position on. Use it when JetStream lost data (the stream was deleted or purged, or a
/// crash dropped acknowledged messages). Events still in the stream and older than its
/// duplicate window would be stored twice: start at the first missing position.
#[derive(Parser)]
#[command(name = "command-api republish", bin_name = "command-api republish")]
struct Republish {
    /// First position to publish again (see `GET /api/events`).
    #[arg(long)]
    from: i64,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/keel"
    )]
    database_url: String,
}

/// Creates the database if missing and applies the schema migrations, then exits. Run it
/// as the schema's owner before starting processes whose `DATABASE_URL` holds only the
/// rights of `scripts/postgres-roles.sql` (then run that script again).
#[derive(Parser)]
#[command(name = "command-api migrate", bin_name = "command-api migrate")]
struct Migrate {
    /// The schema owner's URL; unset: `DATABASE_URL`.
    #[arg(long, env = "KEEL_MIGRATE_DATABASE_URL", hide_env_values = true)]
    migrate_database_url: Option<String>,
    /// Keel's database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/keel"
    )]
    database_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    events::process::init_logging();
    if std::env::args().nth(1).as_deref() == Some("publisher") {
        let config = publisher::Config::parse_from(std::env::args().skip(1));
        let publisher = publisher::build(&config).await?;
        tracing::info!("outbox publisher running, without HTTP listeners");
        publisher
            .run_until_stopped(events::process::shutdown_signal())
            .await;
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("republish") {
        let args = Republish::parse_from(std::env::args().skip(1));
        let pool = sqlx::PgPool::connect(&args.database_url).await?;
        events::outbox::request_republish(&pool, domain::ids::Position(args.from)).await?;
        println!(
            "republish from position {} requested; the active publisher picks it up",
            args.from.max(1)
        );
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        let args = Migrate::parse_from(std::env::args().skip(1));
        events::database::migrate(
            args.migrate_database_url
                .as_ref()
                .unwrap_or(&args.database_url),
        )
        .await?;
        println!(
            "schema up to date ({} migrations)",
            events::MIGRATOR.iter().count()
        );
        return Ok(());
    }
    let config = Config::parse();
    let app = command_api::build(config).await?;
    app.run_until_stopped(events::process::shutdown_signal())
        .await?;
    Ok(())
}
