//! The command API's configuration: read once in `main`, from flags or the environment.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// A value that must never be printed: `Debug` shows only how many there are.
#[derive(Clone, Default)]
pub struct ServiceKeys(Vec<String>);

impl ServiceKeys {
    pub fn new(keys: Vec<String>) -> Self {
        Self(keys.into_iter().filter(|k| !k.is_empty()).collect())
    }

    pub fn keys(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceKeys([{} redacted])", self.0.len())
    }
}

impl std::str::FromStr for ServiceKeys {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(
            s.split(',').map(|k| k.trim().to_owned()).collect(),
        ))
    }
}

/// A secret that never prints.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

fn parse_seconds(s: &str) -> Result<Duration, std::num::ParseIntError> {
    s.parse().map(Duration::from_secs)
}

/// Keel command API: commands, queries, the internal API, health and metrics, and the
/// outbox publisher (the Postgres log -> JetStream) unless `--no-publisher`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "command-api",
    version,
    after_help = "Commands (each with its own --help):\n  \
        publisher   run only the outbox publisher, without HTTP listeners\n  \
        republish   ask the active publisher to publish the log again from a position\n  \
        migrate     bring the schema up to date and exit"
)]
pub struct Config {
    /// Postgres, NATS, Redis and the stream, as in every Keel process.
    #[command(flatten)]
    pub connections: events::settings::Settings,

    /// Listen address (port 0 picks a free port).
    #[arg(long, env = "KEEL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,

    /// Listen address of the internal listener: `/internal/*`, `/metrics`, `/healthz`,
    /// `/readyz`. Keep it off the public network (port 0 picks a free port).
    #[arg(long, env = "KEEL_INTERNAL_ADDR", default_value = "127.0.0.1:8090")]
    pub internal_addr: String,

    /// JWKS document of the identity provider. Must be https unless its host is loopback.
    #[arg(long, env = "KEEL_JWKS_URL")]
    pub jwks_url: String,

    /// The exact `iss` accepted in tokens.
    #[arg(long, env = "KEEL_JWT_ISSUER")]
    pub jwt_issuer: String,

    /// Comma-separated audiences: a token's `aud` must contain one of them.
    #[arg(
        long,
        env = "KEEL_JWT_AUDIENCE",
        value_delimiter = ',',
        required = true
    )]
    pub jwt_audience: Vec<String>,

    /// RFC 7662 token introspection endpoint of the identity provider, asked before
    /// sensitive operations (https unless its host is loopback). Unset: no introspection.
    #[arg(long, env = "KEEL_INTROSPECTION_URL")]
    pub introspection_url: Option<String>,

    /// Client id Keel authenticates with at the introspection endpoint (HTTP Basic).
    #[arg(long, env = "KEEL_INTROSPECTION_CLIENT_ID", default_value = "")]
    pub introspection_client_id: String,

    /// Client secret for the introspection endpoint.
    #[arg(
        long,
        env = "KEEL_INTROSPECTION_CLIENT_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    pub introspection_client_secret: Secret,

    /// Comma-separated `name:secret` (or bare `secret`) keys accepted in `X-Api-Key` or
    /// `X-Service-Token` on `/internal/*`; secrets of at least 32 characters. Without
    /// any key, `/internal/*` refuses every request.
    #[arg(
        long,
        env = "KEEL_SERVICE_KEYS",
        default_value = "",
        hide_env_values = true
    )]
    pub service_keys: ServiceKeys,

    /// A file of more keys, one `name:secret` a line (`#` comments), re-read when it
    /// changes and on SIGHUP: keys rotate without a restart.
    #[arg(long, env = "KEEL_SERVICE_KEYS_FILE")]
    pub service_keys_file: Option<PathBuf>,

    /// Comma-separated Origins allowed to open `/ws/notifications` from a browser.
    #[arg(long, env = "KEEL_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Run without the outbox publisher: only the HTTP listeners. Run
    /// `command-api publisher` (or instances without this flag) to publish the log.
    #[arg(long, env = "KEEL_NO_PUBLISHER", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_publisher: bool,

    /// JetStream replicas of the stream and its dead-letter stream: 1, or 3 on a
    /// cluster (a running stream is moved to the new count).
    #[arg(long, env = "KEEL_STREAM_REPLICAS", default_value = "1", value_parser = publisher::stream::parse_replicas)]
    pub stream_replicas: usize,

    /// Seconds between background refreshes of the JWKS.
    #[arg(long, env = "KEEL_JWKS_REFRESH_SECS", default_value = "300", value_parser = parse_seconds)]
    pub jwks_refresh: Duration,

    /// Minimum seconds between two fetches caused by an unknown `kid`.
    #[arg(long, env = "KEEL_JWKS_COOLDOWN_SECS", default_value = "30", value_parser = parse_seconds)]
    pub jwks_cooldown: Duration,

    /// Postgres connections in the pool.
    #[arg(long, env = "KEEL_DB_POOL_SIZE", default_value = "16")]
    pub db_pool_size: u32,

    /// Requests per second one principal (a token's `sub`) may send; bursts of twice
    /// that pass. Beyond: 429 with `Retry-After`.
    #[arg(long, env = "KEEL_RATE_LIMIT", default_value = "100")]
    pub rate_limit: NonZeroU32,

    /// Requests per second one client IP may send without a valid token (bursts of
    /// twice that).
    #[arg(long, env = "KEEL_IP_RATE_LIMIT", default_value = "20")]
    pub ip_rate_limit: NonZeroU32,

    /// Requests handled at once on the public listener; beyond, 503 at once (no queue).
    #[arg(long, env = "KEEL_MAX_IN_FLIGHT", default_value = "1024")]
    pub max_in_flight: usize,

    /// Queries waiting at once for `X-Min-Position`; beyond, 503 at once.
    #[arg(long, env = "KEEL_MAX_POSITION_WAITERS", default_value = "128")]
    pub max_position_waiters: usize,

    /// Open notification sockets per user; the next handshake gets 429.
    #[arg(long, env = "KEEL_WS_MAX_PER_USER", default_value = "8")]
    pub ws_max_per_user: usize,

    /// Open notification sockets on this instance; the next handshake gets 503.
    #[arg(long, env = "KEEL_WS_MAX_SOCKETS", default_value = "10000")]
    pub ws_max_sockets: usize,
}
