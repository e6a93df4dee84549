//! Postgres roles (`scripts/postgres-roles.sql`): the schema's owner migrates, and
//! command-api, the projectors and the relay each run as a role that holds only the
//! rights its own SQL needs; what a role was not granted is refused and changes nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_tests::api_process::binary_named;
use keel_tests::notifications::{Connect, connect};
use keel_tests::principals::Principal;
use keel_tests::test_app::test_config;
use keel_tests::worker_process::WorkerProcess;
use keel_tests::{JwksServer, TestApp, admin_database_url, eventually, unique_name};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

/// A database owned by a role of its own, and the three run-time roles, all with names
/// unique to the test (roles are cluster-wide) and a password (a fresh Debian cluster
/// trusts only `postgres` on loopback).
struct Cluster {
    database: String,
    password: String,
    owner: String,
    api: String,
    projectors: String,
    relay: String,
}

impl Cluster {
    async fn create() -> Self {
        let cluster = Self {
            database: unique_name("keel_test"),
            password: Uuid::new_v4().simple().to_string(),
            owner: unique_name("keel_owner"),
            api: unique_name("keel_api"),
            projectors: unique_name("keel_projectors"),
            relay: unique_name("keel_relay"),
        };
        let mut admin = sqlx::PgConnection::connect(&admin_database_url())
            .await
            .unwrap();
        for role in [
            &cluster.owner,
            &cluster.api,
            &cluster.projectors,
            &cluster.relay,
        ] {
            sqlx::query(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{}'",
                cluster.password
            ))
            .execute(&mut admin)
            .await
            .unwrap();
        }
        sqlx::query(&format!(
            "CREATE DATABASE {} OWNER {}",
            cluster.database, cluster.owner
        ))
        .execute(&mut admin)
        .await
        .unwrap();
        cluster
    }

    /// The database's URL as `role`.
    fn url(&self, role: &str) -> String {
        let admin = admin_database_url();
        let (scheme, rest) = admin.split_once("://").unwrap();
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = host.split_once('/').map_or(host, |(host, _)| host);
        format!(
            "{scheme}://{role}:{}@{host}/{}",
            self.password, self.database
        )
    }

    /// Applies the roles script as the superuser, as an operator would.
    fn grant(&self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres-roles.sql");
        let superuser = admin_database_url();
        let (server, _) = superuser.rsplit_once('/').unwrap();
        run(Command::new("psql")
            .arg(format!("{server}/{}", self.database))
            .args(["-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-v", &format!("api={}", self.api)])
            .args(["-v", &format!("projectors={}", self.projectors)])
            .args(["-v", &format!("relay={}", self.relay)])
            .arg("-f")
            .arg(script));
    }

    async fn drop(self) {
        let mut admin = sqlx::PgConnection::connect(&admin_database_url())
            .await
            .unwrap();
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.database))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(&format!(
            "DROP ROLE {}, {}, {}, {}",
            self.api, self.projectors, self.relay, self.owner
        ))
        .execute(&mut admin)
        .await
        .unwrap();
    }
}

/// Runs a command to its end; fails the test with its output if it fails.
fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Asserts that `sql`, run as the role of `url`, is refused for want of a privilege
/// (SQLSTATE 42501), not by a trigger or a constraint.
async fn refused(url: &str, sql: &str) {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let error = sqlx::query(sql)
        .execute(&mut connection)
        .await
        .expect_err(sql);
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("42501"), "{sql}: {error}");
}

const INSERT_EVENT: &str = "INSERT INTO events
    (event_id, stream_id, version, event_type, schema_version, data, metadata)
    VALUES (gen_random_uuid(), 'user-0190c2a0-0000-7000-8000-000000000000', 1,
            'user.registered', 1, '{}', '{}')";

/// Comments with an `Idempotency-Key`: the API keeps a record of it.
async fn comment(app: &TestApp, post: Uuid, token: &str, body: &str) {
    let response = app
        .request(Method::POST, &format!("/api/posts/{post}/comments"), token)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&json!({ "body": body }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "commenting");
}

/// Waits until the post's read model shows `count` comments.
async fn comments_shown(app: &TestApp, post: Uuid, token: &str, count: usize) {
    eventually(
        Duration::from_secs(20),
        "the post's read model shows its comments",
        || async {
            let (status, body) = app.get(&format!("/api/posts/{post}"), token).await;
            let shown = body["comments"].as_array().map(Vec::len);
            if status == 200 && shown == Some(count) {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn each_process_runs_with_only_its_own_rights_and_the_rest_is_refused() {
    let cluster = Cluster::create().await;
    let (owner, api) = (cluster.url(&cluster.owner), cluster.url(&cluster.api));
    let projectors = cluster.url(&cluster.projectors);
    let relay = cluster.url(&cluster.relay);

    // The owner migrates, then the grants follow; every process runs as its own role.
    let migrated = run(Command::new(binary_named("command-api"))
        .arg("migrate")
        .env("DATABASE_URL", &api)
        .env("KEEL_MIGRATE_DATABASE_URL", &owner)
        .env("RUST_LOG", "warn"));
    assert!(migrated.contains("schema up to date"), "{migrated}");
    cluster.grant();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(api.clone(), &jwks);
    config.connections.migrate_database_url = Some(owner.clone());
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    // Without an owner's URL: the schema is current, so they start without migrating.
    let projector = WorkerProcess::spawn_on("projectors", &app, &projectors);
    let relayer = WorkerProcess::spawn_on("relay", &app, &relay);

    let (_, author_token) = app.register("Ada Author").await;
    let (_, reader_token) = app.register("Rita Reader").await;
    let post = app.published_post(&author_token).await;
    let mut socket = connect(&app, Connect::header(&author_token)).await;
    comment(&app, post, &reader_token, "first").await;
    // The relay read the actor's name from the log; the projectors wrote the read model
    // the API reads.
    let frame: Value = socket.next().await;
    assert_eq!(frame["type"], "comment.added", "{frame}");
    assert_eq!(frame["data"]["by"]["name"], "Rita Reader", "{frame}");
    comments_shown(&app, post, &author_token, 1).await;

    // A rebuild while live, as the projectors' role: the API reads the swapped-in copy,
    // and the live projector goes on writing it.
    let rebuilt = run(Command::new(binary_named("projectors"))
        .args(["rebuild", "posts"])
        .env("DATABASE_URL", &projectors)
        .env("REDIS_URL", app.redis_url_of(Principal::Projectors))
        .env("NATS_URL", app.nats_url_of(Principal::Projectors))
        .env("KEEL_STREAM", &app.stream)
        .env("KEEL_SUBJECT_PREFIX", &app.subject_prefix)
        .env("RUST_LOG", "warn"));
    assert!(rebuilt.contains("posts rebuilt"), "{rebuilt}");
    comments_shown(&app, post, &author_token, 1).await;
    comment(&app, post, &reader_token, "second").await;
    comments_shown(&app, post, &author_token, 2).await;
    assert_eq!(socket.next().await["type"], "comment.added");

    // What no role was granted is refused for want of a privilege, and changes nothing.
    let events = app.event_count().await;
    let rows = "SELECT (SELECT count(*) FROM rm_posts.posts) + (SELECT count(*) FROM rm_posts.comments)
                     + (SELECT count(*) FROM rm_users.users) + (SELECT count(*) FROM idempotency_keys)";
    let before = count(&app, rows).await;
    assert!(before > 0);
    refused(&api, "UPDATE events SET event_type = event_type").await;
    refused(&api, "DELETE FROM events").await;
    refused(&api, "TRUNCATE events").await;
    refused(&api, "DELETE FROM rm_posts.comments").await;
    refused(&api, "UPDATE rm_users.users SET name = 'x'").await;
    refused(&api, "CREATE TABLE public.intruder (id int)").await;
    refused(&api, "CREATE SCHEMA rm_posts_next").await;
    refused(&projectors, INSERT_EVENT).await;
    refused(&projectors, "DELETE FROM events").await;
    refused(&projectors, "UPDATE outbox_checkpoint SET position = 0").await;
    refused(&projectors, "DELETE FROM idempotency_keys").await;
    refused(&relay, INSERT_EVENT).await;
    refused(&relay, "UPDATE outbox_checkpoint SET position = 0").await;
    refused(&relay, "DELETE FROM idempotency_keys").await;
    refused(&relay, "SELECT count(*) FROM rm_users.users").await;
    assert_eq!(app.event_count().await, events, "the log is unchanged");
    assert_eq!(
        count(&app, rows).await,
        before,
        "the read models and idempotency records are unchanged"
    );

    drop((projector, relayer, socket));
    app.stop().await;
    cluster.drop().await;
}
