//! The command API: where commands enter Keel, and where queries read the read models.
//!
//! Pipeline: **HTTP command** -> decide (`domain`) -> **event log** (Postgres,
//! which is also the outbox) -> publisher -> JetStream -> projectors / relay -> Redis
//! -> WebSocket. This crate owns the first step, the reads of the log itself, and the
//! queries that answer from the projectors' read models (and the Redis UI cache). It
//! also starts the outbox publisher (the `publisher` crate) unless `--no-publisher`.
//!
//! - [`config`]: flags and environment. [`state`]: the handles handlers share.
//! - [`auth`]: bearer JWTs against the cached JWKS, introspection for sensitive
//!   operations; service keys for `/internal/*`. [`policy`]: live authorization
//!   (revocations, roles and standing in Keel), kept current from the log.
//! - [`request_id`], [`error`], [`body`], [`query`], [`validation`]: the request edge,
//!   RFC 9457. [`rate_limit`] and [`load`]: the limits every API request passes first.
//! - [`commands`]: `If-Match`, `Idempotency-Key`, metadata, and the HTTP response to
//!   the writer's outcome (status, body, `ETag`, `Location`).
//! - [`writer`]: group commit of commands into the log, with the aggregate cache and
//!   the idempotency keys; it answers a typed outcome.
//! - [`consistency`]: `X-Min-Position` (read your writes) and read-model snapshots.
//! - [`ui_cache`]: the Redis UI cache, bounded by a short timeout and failing open.
//! - The endpoints, each with `router()`: [`users`] (the User commands and the user
//!   read), [`posts`] (the Blog commands), [`revocations`], [`authors`], [`post_reads`],
//!   [`dashboard`], [`internal`] (queries of the read models), [`log_reads`], [`health`],
//!   [`metrics`].
//! - [`notifications`]: the WebSocket hub at `/ws/notifications`; [`page`]: the browser
//!   page at `/` that shows them.
//! - [`app`] (the public listener) and [`internal_app`] (the internal listener:
//!   `/internal/*`, `/metrics`, health) merge the routers and layers; [`build`] binds
//!   both and wires everything, the publisher included unless `--no-publisher`.

pub mod auth;
pub mod authors;
pub mod body;
pub mod commands;
pub mod config;
pub mod consistency;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod internal;
pub mod load;
pub mod log_reads;
pub mod metrics;
pub mod notifications;
pub mod page;
pub mod policy;
pub mod post_reads;
pub mod posts;
pub mod query;
pub mod rate_limit;
pub mod request_id;
pub mod revocations;
pub mod state;
pub mod ui_cache;
pub mod users;
pub mod validation;
pub mod writer;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use sqlx::postgres::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::service_key::Keyring;
use crate::auth::{KeySet, Verifier};
pub use crate::config::Config;
use crate::state::AppState;

/// The public listener's routes, with the layers every request goes through. Tests
/// call this too.
pub fn app(state: AppState) -> Router {
    // What clients call passes the limits first: requests in flight, then rate, then
    // Keel's headers, all before any handler.
    let api = Router::new()
        .merge(users::router())
        .merge(posts::router())
        .merge(revocations::router())
        .merge(authors::router())
        .merge(post_reads::router())
        .merge(dashboard::router())
        .merge(log_reads::router())
        .merge(notifications::router())
        .merge(page::router())
        .layer(axum::middleware::from_fn(validation::check_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit::middleware,
        ));
    let api = load::limit_in_flight(api, state.in_flight.clone());
    Router::new()
        .merge(api)
        .merge(health::router())
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(body::refuse_declared_oversize))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(request_id::middleware))
        .with_state(state)
}

/// The internal listener's routes: other services (`/internal/*`, by service key) and
/// operators (`/metrics`, unauthenticated: the listener's address is what guards it).
pub fn internal_app(state: AppState) -> Router {
    Router::new()
        .merge(internal::router())
        .merge(metrics::router())
        .merge(health::router())
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(request_id::middleware))
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] events::settings::ConnectError),
    #[error("cannot set up the Redis connections")]
    Redis(#[source] redis::RedisError),
    #[error(transparent)]
    Stream(#[from] publisher::StreamError),
    #[error("cannot build the JWKS client")]
    Jwks(#[source] auth::jwks::FetchError),
    #[error("{variable} {reason}")]
    InsecureUrl {
        variable: &'static str,
        reason: String,
    },
    #[error("KEEL_JWT_AUDIENCE names no audience")]
    NoAudience,
    #[error("cannot read the authorization policy from the log")]
    Policy(#[source] events::policy::ReadError),
    #[error("cannot build the introspection client")]
    Introspection(#[source] reqwest::Error),
    #[error("invalid service keys")]
    ServiceKeys(#[source] auth::service_key::KeyError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, ready-to-run command API.
pub struct Application {
    listener: TcpListener,
    router: Router,
    internal_listener: TcpListener,
    internal_router: Router,
    background: JoinSet<()>,
    stop_background: CancellationToken,
    writer: writer::Writer,
    /// `None` with `--no-publisher`.
    publisher: Option<publisher::Publisher>,
    hub: Arc<notifications::hub::Hub>,
}

/// Prepares the database, binds the listener and wires the state; nothing runs yet.
pub async fn build(config: Config) -> Result<Application, StartError> {
    let insecure = |variable| move |reason| StartError::InsecureUrl { variable, reason };
    auth::ensure_secure_url(&config.jwks_url).map_err(insecure("KEEL_JWKS_URL"))?;
    let audiences: Vec<String> = config
        .jwt_audience
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if audiences.is_empty() {
        return Err(StartError::NoAudience);
    }
    let introspection = match &config.introspection_url {
        Some(url) => {
            auth::ensure_secure_url(url).map_err(insecure("KEEL_INTROSPECTION_URL"))?;
            Some(Arc::new(
                auth::introspection::Introspection::new(
                    url.clone(),
                    config.introspection_client_id.clone(),
                    config.introspection_client_secret.clone(),
                )
                .map_err(StartError::Introspection)?,
            ))
        }
        None => {
            tracing::warn!(
                "KEEL_INTROSPECTION_URL is not set: sensitive operations trust the token alone"
            );
            None
        }
    };
    let service_keys = Arc::new(
        Keyring::load(&config.service_keys, config.service_keys_file.clone())
            .await
            .map_err(StartError::ServiceKeys)?,
    );
    let connections = &config.connections;
    let ca = connections.private_ca()?;
    let pool = connections.database(config.db_pool_size).await?;
    let policy = Arc::new(
        policy::Policy::load(pool.clone())
            .await
            .map_err(StartError::Policy)?,
    );
    let redis = connections.redis(&ca)?;
    let ui_cache = ui_cache::UiCache::new(redis.clone()).map_err(StartError::Redis)?;
    let jetstream = connections.jetstream(&ca).await?;
    let keys = Arc::new(
        KeySet::new(config.jwks_url.clone(), config.jwks_cooldown).map_err(StartError::Jwks)?,
    );
    if let Err(error) = keys.refresh().await {
        tracing::warn!(error = %error, "jwks not reachable at start; tokens fail until it is");
    }
    let verifier = Arc::new(Verifier::new(
        keys.clone(),
        config.jwt_issuer.clone(),
        audiences,
    ));
    let metrics = Arc::new(metrics::Metrics::default());
    let publisher = if config.no_publisher {
        tracing::info!("no outbox publisher in this instance (--no-publisher)");
        None
    } else {
        let stream = publisher::EventStream::of(connections, config.stream_replicas);
        stream.provision(&jetstream).await?;
        Some(publisher::Publisher {
            pool: pool.clone(),
            database_url: connections.database_url.clone(),
            jetstream: jetstream.clone(),
            stream,
            progress: metrics.publisher.clone(),
        })
    };
    let hub = Arc::new(
        notifications::hub::Hub::new(
            redis.clone(),
            &connections.stream,
            config.allowed_origins.clone(),
            policy.clone(),
            notifications::slots::Slots::new(config.ws_max_per_user, config.ws_max_sockets),
        )
        .map_err(StartError::Redis)?,
    );
    let (writer, writer_handle) = writer::writer(pool.clone());
    let rate_limits = Arc::new(rate_limit::RateLimits::new(
        config.rate_limit,
        config.ip_rate_limit,
    ));
    let state = AppState {
        pool: pool.clone(),
        writer: writer_handle,
        verifier,
        policy: policy.clone(),
        introspection,
        service_keys: service_keys.clone(),
        nats: jetstream.client(),
        ui_cache,
        stream: Arc::from(connections.stream.as_str()),
        metrics,
        hub: hub.clone(),
        rate_limits: rate_limits.clone(),
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
        readiness: Arc::default(),
        position_waiters: Arc::new(tokio::sync::Semaphore::new(config.max_position_waiters)),
    };
    let listener = bind(&config.http_addr).await?;
    let internal_listener = bind(&config.internal_addr).await?;
    let stop_background = CancellationToken::new();
    let mut background = JoinSet::new();
    background.spawn(refresh_jwks(
        keys,
        config.jwks_refresh,
        stop_background.clone(),
    ));
    background.spawn(purge_idempotency_keys(pool, stop_background.clone()));
    background.spawn(rate_limits.forget_idle(stop_background.clone()));
    background.spawn(hub.clone().subscribe(stop_background.clone()));
    background.spawn(
        hub.clone()
            .enforce(policy.changes(), stop_background.clone()),
    );
    background.spawn(policy.run(stop_background.clone()));
    background.spawn(auth::key_file::watch(service_keys, stop_background.clone()));
    Ok(Application {
        listener,
        router: app(state.clone()),
        internal_listener,
        internal_router: internal_app(state),
        background,
        stop_background,
        writer,
        publisher,
        hub,
    })
}

async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

async fn refresh_jwks(keys: Arc<KeySet>, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(error) = keys.refresh().await {
            tracing::warn!(error = %error, "jwks refresh failed; keeping the cached keys");
        }
    }
}

async fn purge_idempotency_keys(pool: PgPool, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        match writer::idempotency::purge_expired_keys(&pool).await {
            Ok(purged) => tracing::info!(purged, "expired idempotency keys purged"),
            Err(error) => tracing::warn!(error = %error, "purging idempotency keys failed"),
        }
    }
}

impl Application {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The internal listener's address.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal_listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Serves both listeners until `shutdown` resolves, then finishes the requests in
    /// flight (and the commands they wait for) before returning.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let Application {
            listener,
            router,
            internal_listener,
            internal_router,
            mut background,
            stop_background,
            writer,
            publisher,
            hub,
        } = self;
        let writer = tokio::spawn(writer.run());
        if let Some(publisher) = publisher {
            background.spawn(publisher.run(stop_background.clone()));
        }
        tracing::info!(addr = %listener.local_addr()?, "command-api listening");
        tracing::info!(
            addr = %internal_listener.local_addr()?,
            "command-api internal listener listening"
        );
        let stopping = CancellationToken::new();
        let (closing, stop) = (hub.closing.clone(), stopping.clone());
        let stopped = stop_background.clone();
        background.spawn(async move {
            tokio::select! {
                () = shutdown => {}
                () = stopped.cancelled() => {}
            }
            // Sockets outlive their upgrade request: close them (1001) explicitly.
            closing.cancel();
            stop.cancel();
        });
        // No Nagle delay: a notification frame goes out at once, even right after a ping
        // (it was held up to 40 ms behind the client's delayed ack).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(error = %error, "cannot set TCP_NODELAY");
            }
        });
        // Clients without a valid token are limited by their address.
        let public = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopping.clone().cancelled_owned())
        .into_future();
        // The client's address keys the limit on failed service-key attempts.
        let internal = axum::serve(
            internal_listener,
            internal_router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopping.cancelled_owned())
        .into_future();
        let (public, internal) = tokio::join!(public, internal);
        let served = public.and(internal);
        hub.sessions.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), hub.sessions.wait()).await;
        // The router (and with it every writer handle) is gone: the writer drains and stops.
        stop_background.cancel();
        let _ = writer.await;
        while background.join_next().await.is_some() {}
        served
    }
}
