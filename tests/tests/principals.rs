//! Isolation (CONTRACT "Isolation and limits"): every process connects to Redis and NATS
//! as its own principal, which holds only what that process needs. What it does not hold
//! is refused by the server, and nothing changes: no message reaches a channel or the
//! stream, no key is lost.

use std::time::Duration;

use async_nats::{Event, ServerError};
use futures::StreamExt;
use keel_tests::principals::{Principal, nats_connect};
use keel_tests::stream::count;
use keel_tests::{TestApp, eventually};
use uuid::Uuid;

const WORKERS_AND_API: [Principal; 3] = [
    Principal::CommandApi,
    Principal::Projectors,
    Principal::Relay,
];

async fn redis(app: &TestApp, principal: Principal) -> redis::aio::MultiplexedConnection {
    redis::Client::open(app.redis_url_of(principal))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{principal:?} connects to Redis: {e}"))
}

/// Runs `command` as `principal` and asserts Redis refused it for want of permission.
async fn refused(app: &TestApp, principal: Principal, command: &redis::Cmd, what: &str) {
    let mut connection = redis(app, principal).await;
    match command.query_async::<redis::Value>(&mut connection).await {
        Err(error) if error.code() == Some("NOPERM") => {}
        other => panic!("{principal:?} {what}: expected NOPERM, got {other:?}"),
    }
}

#[tokio::test]
async fn only_the_relay_publishes_notifications_and_it_cannot_subscribe() {
    let app = TestApp::spawn().await.unwrap();
    let channel = notify::channel(domain::ids::UserId(Uuid::new_v4()));
    // The admin listens on the channel: the first message it sees must be the relay's.
    let mut listener = redis::Client::open(app.redis_admin_url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    listener.subscribe(&channel).await.unwrap();

    let forged = || redis::cmd("PUBLISH").arg(&channel).arg("forged").clone();
    refused(
        &app,
        Principal::CommandApi,
        &forged(),
        "PUBLISH notify.user.*",
    )
    .await;
    refused(
        &app,
        Principal::Projectors,
        &forged(),
        "PUBLISH notify.user.*",
    )
    .await;
    let spublish = redis::cmd("SPUBLISH").arg(&channel).arg("forged").clone();
    refused(
        &app,
        Principal::CommandApi,
        &spublish,
        "SPUBLISH notify.user.*",
    )
    .await;

    let mut relay = redis(&app, Principal::Relay).await;
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("relayed")
        .query_async(&mut relay)
        .await
        .unwrap();
    assert!(receivers >= 1, "the listener receives it");
    let mut messages = listener.on_message();
    let first = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("the relay's message arrives")
        .expect("the subscription is open");
    assert_eq!(
        first.get_payload::<String>().unwrap(),
        "relayed",
        "a refused PUBLISH reached the channel"
    );
    drop(messages);

    refused(
        &app,
        Principal::Relay,
        redis::cmd("SUBSCRIBE").arg(&channel),
        "SUBSCRIBE",
    )
    .await;
    refused(
        &app,
        Principal::Projectors,
        redis::cmd("SUBSCRIBE").arg("policy.invalidate.all"),
        "SUBSCRIBE",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn no_process_flushes_lists_or_reaches_keys_outside_keel() {
    let app = TestApp::spawn().await.unwrap();
    let key = format!("keel:{}:isolation-probe", app.stream);
    let mut admin = redis(&app, Principal::Admin).await;
    redis::cmd("SET")
        .arg(&key)
        .arg("kept")
        .query_async::<()>(&mut admin)
        .await
        .unwrap();
    for principal in WORKERS_AND_API {
        refused(&app, principal, &redis::cmd("FLUSHALL"), "FLUSHALL").await;
        refused(&app, principal, &redis::cmd("FLUSHDB"), "FLUSHDB").await;
        refused(&app, principal, redis::cmd("KEYS").arg("*"), "KEYS").await;
        refused(&app, principal, &redis::cmd("INFO"), "INFO").await;
        refused(
            &app,
            principal,
            redis::cmd("CONFIG").arg("GET").arg("*"),
            "CONFIG",
        )
        .await;
        refused(
            &app,
            principal,
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"),
            "CLIENT KILL",
        )
        .await;
        refused(
            &app,
            principal,
            redis::cmd("SET").arg("outside-keel").arg("x"),
            "SET outside keel:",
        )
        .await;
    }
    let kept: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        kept.as_deref(),
        Some("kept"),
        "a refused command changed Redis"
    );
    let outside: i64 = redis::cmd("EXISTS")
        .arg("outside-keel")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(outside, 0);
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut admin)
        .await
        .unwrap();
    app.stop().await;
}

/// Connects to the app's NATS as `principal`, reporting the server's errors on `errors`.
async fn nats_reporting(
    app: &TestApp,
    principal: Principal,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let url = app.nats_url_of(principal);
    let (user, password) = events::nats::credentials(&url).expect("a principal's URL");
    let (errors, reported) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .user_and_password(user, password)
        .request_timeout(Some(Duration::from_secs(2)))
        .event_callback(move |event| {
            let errors = errors.clone();
            async move {
                if let Event::ServerError(ServerError::Other(text)) = event {
                    let _ = errors.send(text);
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{principal:?} connects to NATS: {e}"));
    (client, reported)
}

#[tokio::test]
async fn the_workers_cannot_publish_an_event() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    drop(token);
    let admin = app.nats_admin_url();
    let before = eventually(
        Duration::from_secs(20),
        "the registration is on the bus",
        || {
            let admin = admin.clone();
            let stream = app.stream.clone();
            async move {
                match count(&admin, &stream).await.map_err(|e| e.to_string())? {
                    0 => Err("no message yet".to_owned()),
                    n => Ok(n),
                }
            }
        },
    )
    .await;
    let subject = format!("{}.user.updated", app.subject_prefix);
    for principal in [Principal::Projectors, Principal::Relay] {
        let (client, mut errors) = nats_reporting(&app, principal).await;
        client
            .publish(subject.clone(), r#"{"forged":true}"#.into())
            .await
            .unwrap();
        // PING/PONG after the PUB: the server has handled it by then.
        client.flush().await.unwrap();
        let error = tokio::time::timeout(Duration::from_secs(5), errors.recv())
            .await
            .unwrap_or_else(|_| panic!("{principal:?}: no permission error reported"))
            .unwrap();
        assert!(
            error.to_lowercase().contains("permissions violation") && error.contains(&subject),
            "{principal:?}: {error}"
        );
        assert_eq!(
            count(&admin, &app.stream).await.unwrap(),
            before,
            "{principal:?}: a refused publish reached the stream"
        );
    }
    let context = async_nats::jetstream::new(nats_connect(&admin).await.unwrap());
    let deleted = nats_reporting(&app, Principal::Projectors)
        .await
        .0
        .request(format!("$JS.API.STREAM.DELETE.{}", app.stream), "".into())
        .await;
    assert!(deleted.is_err(), "the projectors may not delete the stream");
    assert!(context.get_stream(&app.stream).await.is_ok());
    app.stop().await;
}
