//! The internal listener and its service keys: `/internal/*` and `/metrics` answer there
//! and nowhere else, a key is named and long, travels in `X-Api-Key` or
//! `X-Service-Token`, rotates through the keys file (on change and on SIGHUP), and
//! failed attempts are limited per client IP. No user token ever counts.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use keel_tests::api_process::ApiProcess;
use keel_tests::jwks_server::issuer;
use keel_tests::principals::{Principal, nats_connect, principals};
use keel_tests::test_app::{SERVICE_KEY, SERVICE_NAME, SERVICE_SECRET, test_config};
use keel_tests::{
    JwksServer, TestApp, eventually, fresh_database, problem, test_log_path, unique_name,
    unique_subject_prefix,
};
use reqwest::{Client, Response};
use serde_json::{Value, json};
use uuid::Uuid;

/// Every secret here holds `test-service-key-3f9c1a`, so `scripts/test` would find any
/// that reached a log.
const KEY_A: &str = "test-service-key-3f9c1a-aaaaaaaaaaaaaaaa";
const KEY_B: &str = "test-service-key-3f9c1a-bbbbbbbbbbbbbbbb";

/// A row of the `users` read model, as the projector would write it.
async fn user_row(pool: &sqlx::PgPool, id: Uuid, name: &str) {
    sqlx::query(
        "INSERT INTO rm_users.users (id, email, name, roles, active, version)
         VALUES ($1, $2, $3, $4, true, 3)",
    )
    .bind(id)
    .bind(format!("{}@pii.test", name.to_lowercase()))
    .bind(name)
    .bind(vec!["user".to_owned()])
    .execute(pool)
    .await
    .unwrap();
}

/// How a request presents its credentials.
#[derive(Debug, Clone, Copy)]
enum Present<'a> {
    Nothing,
    ApiKey(&'a str),
    ServiceToken(&'a str),
    Bearer(&'a str),
}

async fn get_user(client: &Client, base: &str, id: Uuid, present: Present<'_>) -> Response {
    let request = client.get(format!("{base}/internal/users/{id}"));
    let request = match present {
        Present::Nothing => request,
        Present::ApiKey(key) => request.header("x-api-key", key),
        Present::ServiceToken(key) => request.header("x-service-token", key),
        Present::Bearer(token) => request.bearer_auth(token),
    };
    request.send().await.unwrap()
}

async fn status_of(client: &Client, base: &str, id: Uuid, key: &str) -> u16 {
    get_user(client, base, id, Present::ApiKey(key))
        .await
        .status()
        .as_u16()
}

/// Polls until `key` gets `expected` (200 or 401) from `base`.
async fn key_answers(base: &str, id: Uuid, key: &str, expected: u16, what: &str) {
    let client = Client::new();
    eventually(Duration::from_secs(10), what, || {
        let client = client.clone();
        async move {
            match status_of(&client, base, id, key).await {
                status if status == expected => Ok(()),
                status => Err(format!("status {status}")),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn the_internal_routes_answer_on_the_internal_listener_only_and_only_to_a_service_key() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app.pool, ada, "Ada").await;
    let (public, internal) = (app.base_url.as_str(), app.internal_url.as_str());
    let client = &app.client;

    // The public listener knows neither `/internal/*` nor `/metrics`.
    problem(
        get_user(client, public, ada, Present::ApiKey(SERVICE_SECRET)).await,
        404,
    )
    .await;
    problem(client.get(app.url("/metrics")).send().await.unwrap(), 404).await;
    // The internal listener serves them, and nothing of the public API.
    let metrics = client.get(app.internal("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("keel_outbox_depth "));
    let token = app.token(ada, &["user"]);
    let api = client
        .get(app.internal(&format!("/api/users/{ada}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    problem(api, 404).await;
    for base in [public, internal] {
        for path in ["/healthz", "/readyz"] {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(response.status(), 200, "{base}{path}");
        }
    }

    // Either header carries the key; only the secret is sent.
    let expected = json!({"id": ada, "email": "ada@pii.test", "name": "Ada",
                          "roles": ["user"], "active": true, "version": 3});
    for present in [
        Present::ApiKey(SERVICE_SECRET),
        Present::ServiceToken(SERVICE_SECRET),
    ] {
        let response = get_user(client, internal, ada, present).await;
        assert_eq!(response.status(), 200, "{present:?}");
        assert_eq!(response.json::<Value>().await.unwrap(), expected);
    }
    let caller = format!("\"service\":\"{SERVICE_NAME}\"");
    eventually(
        Duration::from_secs(5),
        "the caller's name is logged",
        || async { logged(&[&caller, &ada.to_string()]) },
    )
    .await;

    // No key, a wrong one, the whole `name:secret`, a user's or an admin's token: 401.
    let events_before = app.event_count().await;
    let admin = app.admin_token();
    let wrong = format!("{SERVICE_SECRET}x");
    for present in [
        Present::Nothing,
        Present::ApiKey(""),
        Present::ApiKey(&wrong),
        Present::ServiceToken(&wrong),
        Present::ApiKey(SERVICE_KEY),
        Present::Bearer(&token),
        Present::Bearer(&admin),
    ] {
        let response = get_user(client, internal, ada, present).await;
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{present:?}"
        );
        problem(response, 401).await;
    }
    let both = client
        .get(app.internal(&format!("/internal/users/{ada}")))
        .header("x-api-key", "Bearer")
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    problem(both, 401).await;
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing was written"
    );

    // A graceful stop closes both listeners.
    let (public, internal) = (app.url("/healthz"), app.internal("/healthz"));
    app.stop().await;
    for url in [public, internal] {
        assert!(reqwest::get(&url).await.is_err(), "{url} still answers");
    }
}

#[tokio::test]
async fn two_configured_keys_are_both_accepted_and_without_keys_nobody_is() {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.service_keys = format!("old:{KEY_A}, {KEY_B}").parse().unwrap();
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app.pool, ada, "Ada").await;
    for key in [KEY_A, KEY_B] {
        assert_eq!(
            status_of(&app.client, &app.internal_url, ada, key).await,
            200
        );
    }
    assert_eq!(
        status_of(&app.client, &app.internal_url, ada, SERVICE_SECRET).await,
        401
    );
    let unknown = Uuid::new_v4();
    problem(
        get_user(
            &app.client,
            &app.internal_url,
            unknown,
            Present::ApiKey(KEY_B),
        )
        .await,
        404,
    )
    .await;
    app.stop().await;

    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.service_keys = "".parse().unwrap();
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    user_row(&app.pool, ada, "Ada").await;
    for present in [
        Present::Nothing,
        Present::ApiKey(""),
        Present::ApiKey(SERVICE_SECRET),
    ] {
        problem(
            get_user(&app.client, &app.internal_url, ada, present).await,
            401,
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_short_secret_refuses_the_start_without_showing_it() {
    let short = "short-test-service-key-3f9c1a";
    assert!(short.len() < 32);
    let jwks = JwksServer::start().await.unwrap();
    let database = fresh_database().await.unwrap();

    let mut config = test_config(database.clone(), &jwks);
    config.service_keys = format!("{SERVICE_KEY},billing:{short}").parse().unwrap();
    let error = anyhow::Error::from(command_api::build(config).await.err().unwrap());
    let message = format!("{error:#}");
    assert!(message.contains("billing"), "{message}");
    assert!(message.contains("32 characters"), "{message}");
    assert!(!message.contains(short), "{message}");

    let file = KeysFile::new(&format!("# billing\nbilling:{short}\n"));
    let mut config = test_config(database, &jwks);
    config.service_keys_file = Some(file.path.clone());
    let error = anyhow::Error::from(command_api::build(config).await.err().unwrap());
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("billing in {}", file.path.display())),
        "{message}"
    );
    assert!(!message.contains(short), "{message}");
}

/// A keys file of the test's own, removed at the end.
struct KeysFile {
    path: PathBuf,
}

impl KeysFile {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name("keel-service-keys"));
        std::fs::write(&path, text).unwrap();
        Self { path }
    }

    /// Replaces the file at once (write beside, then rename over it).
    fn replace(&self, text: &str, modified: Option<SystemTime>) {
        let next = self.path.with_extension("next");
        std::fs::write(&next, text).unwrap();
        if let Some(modified) = modified {
            let file = std::fs::File::options().write(true).open(&next).unwrap();
            file.set_modified(modified).unwrap();
        }
        std::fs::rename(&next, &self.path).unwrap();
    }

    fn modified(&self) -> SystemTime {
        std::fs::metadata(&self.path).unwrap().modified().unwrap()
    }
}

impl Drop for KeysFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether this process's server log holds a line with all of `parts`.
fn logged(parts: &[&str]) -> Result<(), String> {
    let log = std::fs::read_to_string(test_log_path()).map_err(|e| e.to_string())?;
    log.lines()
        .any(|line| parts.iter().all(|part| line.contains(part)))
        .then_some(())
        .ok_or_else(|| format!("no log line holds {parts:?}"))
}

#[tokio::test]
async fn a_rewritten_keys_file_rotates_the_keys_without_a_restart() {
    let file = KeysFile::new(&format!("# rotated by the test\nrotating:{KEY_A}\n"));
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.service_keys_file = Some(file.path.clone());
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app.pool, ada, "Ada").await;
    let internal = app.internal_url.as_str();
    assert_eq!(status_of(&app.client, internal, ada, KEY_A).await, 200);
    assert_eq!(status_of(&app.client, internal, ada, KEY_B).await, 401);
    // The variable's keys are accepted beside the file's.
    assert_eq!(
        status_of(&app.client, internal, ada, SERVICE_SECRET).await,
        200
    );

    file.replace(&format!("rotating:{KEY_B}\n"), None);
    key_answers(internal, ada, KEY_B, 200, "the new key is accepted").await;
    assert_eq!(status_of(&app.client, internal, ada, KEY_A).await, 401);

    // A file made invalid is not loaded: the keys stay as they were.
    file.replace("rotating:too-short\n", None);
    let path = file.path.display().to_string();
    eventually(
        Duration::from_secs(10),
        "the invalid file is reported",
        || async { logged(&["service keys file not loaded", &path]) },
    )
    .await;
    assert_eq!(status_of(&app.client, internal, ada, KEY_B).await, 200);
    assert_eq!(
        status_of(&app.client, internal, ada, SERVICE_SECRET).await,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_keys_file() {
    let file = KeysFile::new(&format!("rotating:{KEY_A}\n"));
    let jwks = JwksServer::start().await.unwrap();
    let database_url = fresh_database().await.unwrap();
    let stream = unique_name("EVENTS_TEST");
    let env = [
        ("DATABASE_URL", database_url.clone()),
        ("KEEL_JWKS_URL", jwks.url.clone()),
        ("KEEL_JWT_ISSUER", issuer().issuer().to_owned()),
        ("KEEL_JWT_AUDIENCE", dev_issuer::DEFAULT_AUDIENCE.to_owned()),
        ("KEEL_STREAM", stream.clone()),
        ("KEEL_SUBJECT_PREFIX", unique_subject_prefix()),
        ("NATS_URL", principals().nats_url(Principal::CommandApi)),
        ("REDIS_URL", principals().redis_url(Principal::CommandApi)),
        ("KEEL_DB_POOL_SIZE", "2".to_owned()),
        ("KEEL_SERVICE_KEYS_FILE", file.path.display().to_string()),
    ];
    let api = ApiProcess::spawn(&env).await.unwrap();
    let ada = Uuid::new_v4();
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    user_row(&pool, ada, "Ada").await;
    let client = Client::new();
    assert_eq!(status_of(&client, &api.internal_url, ada, KEY_A).await, 200);

    // Same size, same modification time: only SIGHUP can tell the file changed.
    assert_eq!(KEY_A.len(), KEY_B.len());
    file.replace(&format!("rotating:{KEY_B}\n"), Some(file.modified()));
    api.signal("HUP");
    key_answers(
        &api.internal_url,
        ada,
        KEY_B,
        200,
        "SIGHUP loads the new key",
    )
    .await;
    assert_eq!(status_of(&client, &api.internal_url, ada, KEY_A).await, 401);
    assert_eq!(
        client
            .get(format!("{}/healthz", api.base_url))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the process lives on"
    );
    api.kill();
    if let Ok(nats) = nats_connect(&principals().nats_url(Principal::Admin)).await {
        let jetstream = async_nats::jetstream::new(nats);
        let _ = jetstream.delete_stream(&stream).await;
        let _ = jetstream.delete_stream(format!("{stream}_DLQ")).await;
    }
}

#[tokio::test]
async fn failed_key_attempts_past_twenty_a_minute_are_limited_per_ip() {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.service_keys = format!("limited-caller:{KEY_A}").parse().unwrap();
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app.pool, ada, "Ada").await;
    let internal = app.internal_url.as_str();
    assert_eq!(status_of(&app.client, internal, ada, KEY_A).await, 200);

    // Another loopback address: the server sees a second client IP.
    let other_ip = Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    for attempt in 1..=25 {
        let response = get_user(&other_ip, internal, ada, Present::ApiKey(KEY_B)).await;
        if attempt <= 20 {
            problem(response, 401).await;
        } else {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
            problem(response, 429).await;
        }
    }
    // While limited, even the right key from that IP is refused...
    problem(
        get_user(&other_ip, internal, ada, Present::ApiKey(KEY_A)).await,
        429,
    )
    .await;
    // ...but not from another IP, whose failures are its own.
    assert_eq!(status_of(&app.client, internal, ada, KEY_A).await, 200);
    assert_eq!(status_of(&app.client, internal, ada, KEY_B).await, 401);

    // The log names the caller and never holds a secret.
    eventually(
        Duration::from_secs(5),
        "the caller's name is logged",
        || async { logged(&["\"service\":\"limited-caller\"", &ada.to_string()]) },
    )
    .await;
    let log = std::fs::read_to_string(test_log_path()).unwrap();
    for secret in [KEY_A, KEY_B, SERVICE_SECRET, "test-service-key-3f9c1a"] {
        assert!(!log.contains(secret), "the log holds a secret");
    }
    app.stop().await;
}
