//! Hubs subscribe per user (issue 13): a command-api instance's hub receives from Redis
//! only the notifications of the users with a socket on it, and stops receiving a user's
//! once that user's last socket there closed. Three real `command-api` processes share
//! one database, stream and Redis (as the command API's principal); the relay runs.

use std::time::Duration;

use futures::StreamExt;
use keel_tests::api_process::ApiProcess;
use keel_tests::jwks_server::issuer;
use keel_tests::notifications::{Connect, RunningRelay, Socket, channel_subscribers, try_connect};
use keel_tests::{TestApp, eventually};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const RECEIVED: &str = "keel_hub_notifications_received_total";

/// A `command-api` process on `app`'s database, stream and Redis.
async fn hub(app: &TestApp) -> ApiProcess {
    ApiProcess::spawn(&[
        ("DATABASE_URL", app.database_url.clone()),
        ("NATS_URL", app.nats_url.clone()),
        ("REDIS_URL", app.redis_url.clone()),
        ("KEEL_JWKS_URL", app.jwks.url.clone()),
        ("KEEL_JWT_ISSUER", issuer().issuer().to_owned()),
        ("KEEL_JWT_AUDIENCE", dev_issuer::DEFAULT_AUDIENCE.to_owned()),
        ("KEEL_STREAM", app.stream.clone()),
        ("KEEL_SUBJECT_PREFIX", app.subject_prefix.clone()),
        ("KEEL_DB_POOL_SIZE", "2".to_owned()),
    ])
    .await
    .unwrap()
}

/// The hub's count of notifications received from Redis.
async fn received(hub: &ApiProcess) -> u64 {
    let value = hub
        .metric(RECEIVED)
        .await
        .unwrap_or_else(|| panic!("{RECEIVED} not in /metrics"));
    value as u64
}

async fn socket(hub: &ApiProcess, token: &str) -> Socket {
    try_connect(&hub.base_url, Connect::header(token))
        .await
        .unwrap_or_else(|refused| panic!("socket refused: {refused:?}"))
}

/// Waits until exactly `n` connections subscribe `user`'s channel.
async fn subscribers_become(redis: &redis::aio::MultiplexedConnection, user: Uuid, n: i64) {
    eventually(
        Duration::from_secs(15),
        &format!("{n} subscriber(s) of notify.user.{user}"),
        || {
            let mut redis = redis.clone();
            async move {
                match channel_subscribers(&mut redis, user).await {
                    Ok(count) if count == n => Ok(()),
                    Ok(count) => Err(format!("{count} subscribers")),
                    Err(error) => Err(error.to_string()),
                }
            }
        },
    )
    .await;
}

/// Waits until the hubs' counts reach `expected`; returns them as they are then.
async fn counts_reach(hubs: &[ApiProcess], expected: &[u64]) -> Vec<u64> {
    eventually(
        Duration::from_secs(15),
        &format!("the hubs count {expected:?}"),
        || async {
            let mut counts = Vec::new();
            for hub in hubs {
                counts.push(received(hub).await);
            }
            if counts.iter().zip(expected).all(|(got, want)| got >= want) {
                Ok(counts)
            } else {
                Err(format!("{counts:?}"))
            }
        },
    )
    .await
}

async fn comment(app: &TestApp, token: &str, post: Uuid, body: &str) {
    let response = app
        .send(
            Method::POST,
            &format!("/api/posts/{post}/comments"),
            token,
            json!({ "body": body }),
        )
        .await;
    assert_eq!(response.status(), 201, "commenting");
}

async fn like(app: &TestApp, token: &str, post: Uuid) {
    let response = app
        .request(Method::PUT, &format!("/api/posts/{post}/like"), token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// The frames' types, and that each is about `post`.
fn types_about(frames: &[Value], post: Uuid) -> Vec<&str> {
    for frame in frames {
        assert_eq!(frame["data"]["post_id"], post.to_string(), "{frame}");
    }
    frames
        .iter()
        .map(|frame| frame["type"].as_str().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_receives_only_the_notifications_of_its_users() {
    let app = TestApp::spawn().await.unwrap();
    let relay = RunningRelay::start(&app).await;
    let hubs = [hub(&app).await, hub(&app).await, hub(&app).await];
    let mut redis = redis::Client::open(app.redis_admin_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let (ada, ada_token) = app.register("Ada").await;
    let (bob, bob_token) = app.register("Bob").await;
    let (_, carl_token) = app.register("Carl").await;
    let ada_post = app.published_post(&ada_token).await;
    let bob_post = app.published_post(&bob_token).await;

    // Ada on hub 1, Bob on hub 2, nobody on hub 3; each channel held by its hub alone.
    let mut ada_socket = socket(&hubs[0], &ada_token).await;
    let mut bob_socket = socket(&hubs[1], &bob_token).await;
    subscribers_become(&redis, ada, 1).await;
    subscribers_become(&redis, bob, 1).await;

    comment(&app, &carl_token, ada_post, "one").await;
    comment(&app, &carl_token, ada_post, "two").await;
    like(&app, &carl_token, ada_post).await;
    comment(&app, &carl_token, bob_post, "three").await;
    like(&app, &carl_token, bob_post).await;
    let ada_frames = ada_socket.take(3).await;
    assert_eq!(
        types_about(&ada_frames, ada_post),
        ["comment.added", "comment.added", "post.liked"]
    );
    let bob_frames = bob_socket.take(2).await;
    assert_eq!(
        types_about(&bob_frames, bob_post),
        ["comment.added", "post.liked"]
    );

    // Everything was delivered: what each hub counts now is all it ever received.
    let counts = counts_reach(&hubs, &[3, 2, 0]).await;
    assert_eq!(
        counts,
        [3, 2, 0],
        "hub 1 receives Ada's only, hub 2 Bob's only, hub 3 nothing"
    );
    assert_eq!(channel_subscribers(&mut redis, ada).await.unwrap(), 1);
    assert_eq!(channel_subscribers(&mut redis, bob).await.unwrap(), 1);

    // Their sockets closed, the hubs let the channels go.
    ada_socket.close().await;
    bob_socket.close().await;
    subscribers_become(&redis, ada, 0).await;
    subscribers_become(&redis, bob, 0).await;

    // New notifications reach Redis (a listener of the admin's sees them) but no hub.
    let mut listener = redis::Client::open(app.redis_admin_url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    for user in [ada, bob] {
        listener
            .subscribe(format!("notify.user.{user}"))
            .await
            .unwrap();
    }
    comment(&app, &carl_token, ada_post, "four").await;
    comment(&app, &carl_token, bob_post, "five").await;
    let mut messages = listener.on_message();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .expect("the relay publishes the new notifications")
            .expect("the listener's subscription is open");
    }
    drop(messages);
    let mut counts = Vec::new();
    for hub in &hubs {
        counts.push(received(hub).await);
    }
    assert_eq!(counts, [3, 2, 0], "unsubscribed hubs receive nothing more");

    relay.stop().await;
    app.stop().await;
}
