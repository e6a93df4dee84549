//! The publisher as its own process: `command-api --no-publisher` serves commands and
//! publishes nothing; `command-api publisher`, started beside it, brings every logged event
//! to the stream exactly once, in log order. Both print `--help`.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use keel_tests::api_process::{ApiProcess, binary};
use keel_tests::principals::{Principal, nats_connect, principals};
use keel_tests::stream::{count, log_ids, messages};
use keel_tests::test_app::mint;
use keel_tests::worker_process::WorkerProcess;
use keel_tests::{JwksServer, eventually, fresh_database, unique_name, unique_subject_prefix};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

/// Users registered over HTTP while no publisher runs.
const USERS: usize = 5;

/// Registers a user through `api` and renames it once: two events.
async fn register_and_rename(client: &reqwest::Client, api: &ApiProcess, n: usize) {
    let id = Uuid::new_v4();
    let token = mint(dev_issuer::TokenRequest {
        sub: id.to_string(),
        roles: vec!["user".to_owned()],
        ttl_seconds: 3600,
        ..dev_issuer::TokenRequest::default()
    });
    let registered = client
        .post(format!("{}/api/users", api.base_url))
        .bearer_auth(&token)
        .json(&json!({"email": format!("user{n}@pii.test"), "name": format!("User {n}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201, "registering user {n}");
    let renamed = client
        .request(Method::PATCH, format!("{}/api/users/{id}", api.base_url))
        .bearer_auth(&token)
        .json(&json!({"name": format!("User {n} renamed")}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200, "renaming user {n}");
}

/// Advisory locks held in the database of `pool` (the active publisher holds one).
async fn advisory_locks(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_publisher_the_api_publishes_nothing_and_the_publisher_process_publishes_all_once_in_order()
 {
    let database_url = fresh_database().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let stream = unique_name("EVENTS_TEST");
    let subject_prefix = unique_subject_prefix();
    let nats_url = principals().nats_url(Principal::CommandApi);
    let admin_nats = principals().nats_url(Principal::Admin);
    // What the publisher process needs, and nothing else.
    let publisher_env = vec![
        ("DATABASE_URL", database_url.clone()),
        ("NATS_URL", nats_url.clone()),
        ("KEEL_STREAM", stream.clone()),
        ("KEEL_SUBJECT_PREFIX", subject_prefix.clone()),
    ];
    let mut api_env = publisher_env.clone();
    api_env.extend([
        ("REDIS_URL", principals().redis_url(Principal::CommandApi)),
        ("KEEL_JWKS_URL", jwks.url.clone()),
        (
            "KEEL_JWT_ISSUER",
            keel_tests::jwks_server::issuer().issuer().to_owned(),
        ),
        ("KEEL_JWT_AUDIENCE", dev_issuer::DEFAULT_AUDIENCE.to_owned()),
        ("KEEL_DB_POOL_SIZE", "4".to_owned()),
    ]);
    let api = ApiProcess::spawn_with_args(&["--no-publisher"], &api_env)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let ready = client
        .get(format!("{}/readyz", api.internal_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        200,
        "NATS is reachable: a publisher could publish"
    );
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();

    for n in 0..USERS {
        register_and_rename(&client, &api, n).await;
    }

    // The commands are in the log, and nothing publishes them.
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let logged = log_ids(&pool).await.unwrap();
    assert!(head > 0, "the log's head moved");
    assert_eq!(logged.len(), 2 * USERS, "every command's event is logged");
    let checkpoint: i64 = sqlx::query_scalar("SELECT position FROM outbox_checkpoint")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(checkpoint, 0, "no publisher moved the outbox checkpoint");
    assert_eq!(
        advisory_locks(&pool).await,
        0,
        "no publisher holds the leader lock"
    );
    assert_eq!(api.metric("keel_publisher_leader").await, Some(0.0));
    assert_eq!(api.metric("keel_outbox_published_total").await, Some(0.0));
    assert_eq!(
        api.metric("keel_outbox_depth").await,
        Some(head as f64),
        "the whole log waits in the outbox"
    );
    assert_eq!(
        count(&admin_nats, &stream).await.unwrap(),
        0,
        "nothing reached the stream"
    );

    // The publisher alone, as its own process, publishes the log.
    let publisher = WorkerProcess::spawn_command("command-api", &["publisher"], &publisher_env);
    let expected = logged.len() as u64;
    eventually(
        Duration::from_secs(30),
        "the publisher process puts every logged event in the stream",
        || {
            let (url, stream) = (admin_nats.clone(), stream.clone());
            async move {
                let stored = count(&url, &stream).await.map_err(|e| e.to_string())?;
                if stored >= expected {
                    Ok(())
                } else {
                    Err(format!("{stored} of {expected} events in the stream"))
                }
            }
        },
    )
    .await;
    let stored: Vec<String> = messages(&admin_nats, &stream)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.msg_id)
        .collect();
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "no event twice in the stream");
    assert_eq!(stored, logged, "stream order equals log order");
    eventually(
        Duration::from_secs(10),
        "the outbox checkpoint reaches the head",
        || {
            let pool = pool.clone();
            async move {
                let checkpoint: i64 = sqlx::query_scalar("SELECT position FROM outbox_checkpoint")
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
                if checkpoint == head {
                    Ok(())
                } else {
                    Err(format!("checkpoint {checkpoint}, head {head}"))
                }
            }
        },
    )
    .await;
    assert_eq!(
        api.metric("keel_publisher_leader").await,
        Some(0.0),
        "the API instance still does not publish"
    );

    publisher.kill();
    api.kill();
    let context = async_nats::jetstream::new(nats_connect(&admin_nats).await.unwrap());
    let _ = context.delete_stream(&stream).await;
    let _ = context.delete_stream(format!("{stream}_DLQ")).await;
}

/// Runs `command-api <args>` and returns its standard output, asserting success.
fn help_of(args: &[&str]) -> String {
    let path = binary();
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins`",
        path.display()
    );
    let output = Command::new(path).args(args).output().unwrap();
    assert!(output.status.success(), "command-api {args:?} succeeds");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_api_and_the_publisher_subcommand_print_their_help() {
    let api = help_of(&["--help"]);
    assert!(api.contains("--no-publisher"), "{api}");
    assert!(api.contains("KEEL_NO_PUBLISHER"), "{api}");
    assert!(api.contains("publisher"), "{api}");
    let publisher = help_of(&["publisher", "--help"]);
    for variable in [
        "DATABASE_URL",
        "KEEL_MIGRATE_DATABASE_URL",
        "NATS_URL",
        "NATS_CREDS",
        "KEEL_TLS_CA_FILE",
        "KEEL_STREAM",
        "KEEL_SUBJECT_PREFIX",
    ] {
        assert!(publisher.contains(variable), "{variable} in {publisher}");
    }
    assert!(
        !publisher.contains("KEEL_HTTP_ADDR"),
        "the publisher has no listener: {publisher}"
    );
}
