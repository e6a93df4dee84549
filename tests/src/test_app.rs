//! `TestApp`: the real command API on port 0 against its own fresh database.

use std::num::NonZeroU32;
use std::time::Duration;

use dev_issuer::{Alg, TokenRequest};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use uuid::Uuid;

use crate::jwks_server::{JwksServer, issuer};
use crate::principals::{self, Principal, principals};
use crate::{fresh_database, init_test_logging, unique_name, unique_subject_prefix};

/// The secret of the test app's service key (what requests send). Every secret in the
/// tests holds `test-service-key-3f9c1a`, which `scripts/test` looks for in the logs.
macro_rules! service_secret {
    () => {
        "test-service-key-3f9c1a-5e0d7b92c4a8"
    };
}
pub const SERVICE_SECRET: &str = service_secret!();
/// The caller named in the test app's `KEEL_SERVICE_KEYS`.
pub const SERVICE_NAME: &str = "tests";
/// The test app's `KEEL_SERVICE_KEYS`: `tests:<SERVICE_SECRET>`.
pub const SERVICE_KEY: &str = concat!("tests:", service_secret!());

pub struct TestApp {
    pub base_url: String,
    /// The internal listener: `/internal/*`, `/metrics`, health.
    pub internal_url: String,
    pub database_url: String,
    /// The JetStream stream this instance publishes to, on `nats_url`.
    pub stream: String,
    pub subject_prefix: String,
    /// The stream's partitions (`KEEL_PARTITIONS`), which the workers are given too.
    pub partitions: events::partitions::Partitions,
    /// The command API's own URLs (its principal); see [`TestApp::nats_url_of`].
    pub nats_url: String,
    pub redis_url: String,
    pub pool: sqlx::PgPool,
    pub jwks: JwksServer,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    pub async fn spawn() -> anyhow::Result<Self> {
        init_test_logging();
        let jwks = JwksServer::start().await?;
        let config = test_config(fresh_database().await?, &jwks);
        Self::spawn_with(config, jwks).await
    }

    pub async fn spawn_with(config: command_api::Config, jwks: JwksServer) -> anyhow::Result<Self> {
        init_test_logging();
        let database_url = config.connections.database_url.clone();
        let stream = config.connections.stream.clone();
        let nats_url = config.connections.nats_url.clone();
        let subject_prefix = config.connections.subject_prefix.clone();
        let partitions = config.connections.partitions;
        let redis_url = config.connections.redis_url.clone();
        let app = command_api::build(config).await?;
        let base_url = format!("http://{}", app.local_addr());
        let internal_url = format!("http://{}", app.internal_addr());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = app
                .run_until_stopped(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url)
            .await?;
        Ok(Self {
            base_url,
            internal_url,
            database_url,
            stream,
            subject_prefix,
            partitions,
            nats_url,
            redis_url,
            pool,
            jwks,
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// Stops the server gracefully, waits for it, and deletes its streams (events and
    /// dead letters) from the shared NATS server.
    pub async fn stop(self) {
        let (nats_url, stream) = (self.nats_admin_url(), self.stream.clone());
        self.stop_keeping_stream().await;
        if let Ok(client) = principals::nats_connect(&nats_url).await {
            let jetstream = async_nats::jetstream::new(client);
            let _ = jetstream.delete_stream(&stream).await;
            let _ = jetstream.delete_stream(format!("{stream}_DLQ")).await;
        }
    }

    /// Stops the server gracefully and waits for it; its stream stays.
    pub async fn stop_keeping_stream(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    /// `principal`'s URL of the NATS server this instance uses.
    pub fn nats_url_of(&self, principal: Principal) -> String {
        principals::nats_as(&self.nats_url, principal)
    }

    /// `principal`'s URL of the Redis server this instance uses.
    pub fn redis_url_of(&self, principal: Principal) -> String {
        principals::redis_as(&self.redis_url, principal)
    }

    /// The admin's URL of this instance's NATS (for inspection and fault injection).
    pub fn nats_admin_url(&self) -> String {
        self.nats_url_of(Principal::Admin)
    }

    /// The admin's URL of this instance's Redis (for inspection and fault injection).
    pub fn redis_admin_url(&self) -> String {
        self.redis_url_of(Principal::Admin)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// `path` on the internal listener.
    pub fn internal(&self, path: &str) -> String {
        format!("{}{}", self.internal_url, path)
    }

    /// A valid RS256 token for `sub` with the given roles (audience `keel`, a `jti`).
    pub fn token(&self, sub: Uuid, roles: &[&str]) -> String {
        mint(TokenRequest {
            sub: sub.to_string(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ttl_seconds: 3600,
            alg: Alg::Rs256,
            ..TokenRequest::default()
        })
    }

    /// An admin's token (a fresh admin id each call, not registered: Keel takes the
    /// token's roles until it registers).
    pub fn admin_token(&self) -> String {
        self.token(Uuid::new_v4(), &["user", "admin"])
    }

    pub fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
    }

    /// GETs `path` with a bearer token: the status and the JSON body (null if none).
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .request(reqwest::Method::GET, path, token)
            .send()
            .await
            .expect("the test app answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Sends JSON with a bearer token.
    pub async fn send(&self, method: Method, path: &str, token: &str, body: Value) -> Response {
        self.request(method, path, token)
            .json(&body)
            .send()
            .await
            .expect("the test app answers")
    }

    /// Registers a new user and returns its id and token.
    pub async fn register(&self, name: &str) -> (Uuid, String) {
        let id = Uuid::new_v4();
        let token = self.token(id, &["user"]);
        let email = format!("{}@pii.test", name.to_lowercase().replace(' ', "."));
        let response = self
            .send(
                Method::POST,
                "/api/users",
                &token,
                serde_json::json!({ "email": email, "name": name }),
            )
            .await;
        assert_eq!(response.status(), 201, "registering {name}");
        (id, token)
    }

    /// The status of creating a draft post with `token` (a probe of write access).
    pub async fn create_post_status(&self, token: &str) -> u16 {
        self.send(
            Method::POST,
            "/api/posts",
            token,
            serde_json::json!({"title": "t", "body": "b"}),
        )
        .await
        .status()
        .as_u16()
    }

    /// Creates and publishes a post; returns its id.
    pub async fn published_post(&self, token: &str) -> Uuid {
        let response = self
            .send(
                Method::POST,
                "/api/posts",
                token,
                serde_json::json!({ "title": "Hello", "body": "World" }),
            )
            .await;
        assert_eq!(response.status(), 201, "creating a post");
        let body: Value = response.json().await.expect("json");
        let id: Uuid = body["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("post id");
        let response = self
            .request(Method::POST, &format!("/api/posts/{id}/publish"), token)
            .send()
            .await
            .expect("publish");
        assert_eq!(response.status(), 200, "publishing a post");
        id
    }

    /// The position of the newest event in the log.
    pub async fn head_position(&self) -> i64 {
        sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("reading the log's head")
    }

    /// How many events the log holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("counting events")
    }
}

/// The configuration of a test instance: its own database, stream and subject prefix,
/// the given JWKS, the shared issuer, the command API's principals. Tests change fields
/// before `spawn_with`.
pub fn test_config(database_url: String, jwks: &JwksServer) -> command_api::Config {
    command_api::Config {
        connections: events::settings::Settings {
            database_url,
            migrate_database_url: None,
            nats_url: principals().nats_url(Principal::CommandApi),
            nats_creds: None,
            redis_url: principals().redis_url(Principal::CommandApi),
            tls_ca_file: None,
            stream: unique_name("EVENTS_TEST"),
            subject_prefix: unique_subject_prefix(),
            partitions: events::partitions::Partitions::ONE,
        },
        http_addr: "127.0.0.1:0".to_owned(),
        internal_addr: "127.0.0.1:0".to_owned(),
        jwks_url: jwks.url.clone(),
        jwt_issuer: issuer().issuer().to_owned(),
        jwt_audience: vec![dev_issuer::DEFAULT_AUDIENCE.to_owned()],
        introspection_url: None,
        introspection_client_id: String::new(),
        introspection_client_secret: Default::default(),
        service_keys: SERVICE_KEY.parse().unwrap_or_default(),
        service_keys_file: None,
        allowed_origins: vec![],
        no_publisher: false,
        stream_replicas: 1,
        jwks_refresh: Duration::from_secs(300),
        jwks_cooldown: Duration::from_secs(30),
        db_pool_size: 4,
        // Limits far above what other tests send; tests/tests/limits.rs lowers them.
        rate_limit: NonZeroU32::new(command_api::rate_limit::MAX_RATE).unwrap_or(NonZeroU32::MAX),
        ip_rate_limit: NonZeroU32::new(command_api::rate_limit::MAX_RATE)
            .unwrap_or(NonZeroU32::MAX),
        max_in_flight: 1024,
        max_position_waiters: 1024,
        ws_max_per_user: 10_000,
        ws_max_sockets: 100_000,
    }
}

/// Mints a token with the shared test issuer.
pub fn mint(request: TokenRequest) -> String {
    issuer()
        .mint(&request)
        .expect("the dev issuer mints tokens")
}

/// Comments `body` on `post` as the holder of `token`, through the API at `base_url`
/// (for writer tasks, which own a client rather than the app); the comment must be
/// accepted.
pub async fn comment_as(
    client: &reqwest::Client,
    base_url: &str,
    post: Uuid,
    token: &str,
    body: &str,
) {
    let response = client
        .post(format!("{base_url}/api/posts/{post}/comments"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "body": body }))
        .send()
        .await
        .expect("the API answers");
    assert_eq!(response.status(), 201, "commenting");
}
