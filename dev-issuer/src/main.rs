//! `keel-dev-issuer`: DEV ONLY token issuer binary; reads its config, binds, serves until Ctrl-C/SIGTERM.

use anyhow::Context;
use clap::Parser;
use dev_issuer::{Client, ClientSecret, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Server};

/// DEV ONLY token issuer for Keel's demo and tests. NEVER USE IN PRODUCTION.
///
/// WARNING: this server mints a validly signed token for ANY subject and ANY role
/// (including admin) to anyone who asks on POST /token. Its introspection and revocation
/// endpoints take one client (HTTP Basic), by default `keel` with a well-known secret. It stands in for Keycloak on
/// developer machines and in tests only. It must never be deployed, exposed on a
/// network, or trusted by a production Keel.
#[derive(Debug, Parser)]
#[command(name = "keel-dev-issuer", version)]
struct Config {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KEEL_DEV_ISSUER_ADDR", default_value = "127.0.0.1:8081")]
    addr: String,
    /// Public base URL overriding `http://ADDR`; the issuer is `<base>/realms/keel`.
    #[arg(long, env = "KEEL_DEV_ISSUER_URL")]
    public_url: Option<String>,
    /// Client id allowed to call the introspection and revocation endpoints (HTTP Basic).
    #[arg(long, env = "KEEL_DEV_ISSUER_CLIENT_ID", default_value = DEFAULT_CLIENT_ID)]
    client_id: String,
    /// That client's secret (the default is a well-known dev value).
    #[arg(
        long,
        env = "KEEL_DEV_ISSUER_CLIENT_SECRET",
        default_value = DEFAULT_CLIENT_SECRET,
        hide_env_values = true
    )]
    client_secret: ClientSecret,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let client = Client::new(config.client_id, config.client_secret);
    let server = Server::bind(&config.addr, config.public_url.as_deref(), client)
        .await
        .with_context(|| format!("starting the dev issuer on {}", config.addr))?;
    let shutdown = shutdown_signal()?;
    let issuer = server.issuer();
    tracing::warn!(
        issuer = issuer.issuer(),
        addr = %server.local_addr()?,
        "DEV ONLY token issuer: mints tokens for anyone, never use in production"
    );
    println!(
        "issuer={} jwks={} introspection={} client_id={}",
        issuer.issuer(),
        issuer.jwks_uri(),
        issuer.introspection_endpoint(),
        server.client().id()
    );
    server.run_until_stopped(shutdown).await?;
    tracing::info!("dev issuer stopped");
    Ok(())
}

/// Registers for Ctrl-C and SIGTERM now (before the ready line is printed, so an
/// early signal is not lost) and returns a future that resolves on the first of them.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for ctrl-c")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for sigterm")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    Ok(async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "listening for ctrl-c failed");
            std::future::pending::<()>().await;
        }
    })
}
