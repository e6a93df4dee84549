//! Hubs subscribe per user (issue 13): a command-api instance's hub receives from Redis
//! only the notifications of the users with a socket on it, and stops receiving a user's
//! once that user's last socket there closed, unless another socket of that user opened
//! meanwhile.

use std::time::Duration;

use command_api::notifications::subscription::BATCH;
use futures::StreamExt;
use futures::future::join_all;
use keel_tests::api_process::ApiProcess;
use keel_tests::jwks_server::issuer;
use keel_tests::notifications::{
    Connect, Notifier, RunningRelay, Socket, channel_subscribers, connect, kill_pubsub_clients,
    try_connect,
};
use keel_tests::principals::Principal;
use keel_tests::redis_server::RedisServer;
use keel_tests::test_app::test_config;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
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

/// Three real `command-api` processes share one database, stream and Redis (as the
/// command API's principal); the relay runs. Ada has a socket on hub 1, Bob on hub 2,
/// nobody on hub 3.
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

/// A user's last socket closing while its next one opens, again and again: whichever the
/// hub sees first, the user's channel ends up subscribed, so once the new socket serves
/// (it got a first marker, by its history or live), the next marker still arrives.
#[tokio::test]
async fn a_socket_opening_as_the_users_last_one_closes_keeps_the_channel() {
    let app = TestApp::spawn().await.unwrap();
    let user = Uuid::new_v4();
    let token = app.token(user, &["user"]);
    let mut notifier = Notifier::new(&app).await;
    let mut socket = connect(&app, Connect::header(&token)).await;
    for round in 0..20 {
        let (_, next) = tokio::join!(socket.close(), connect(&app, Connect::header(&token)));
        socket = next;
        for marker in ["serving", "still subscribed"] {
            let offset = notifier
                .send(user, json!({ "round": round, "marker": marker }))
                .await;
            let frame = socket.next().await;
            assert_eq!(frame["offset"], offset.as_str(), "round {round}: {frame}");
        }
    }
    socket.close().await;
    app.stop().await;
}

/// How many user channels Redis has subscribers for.
async fn user_channels(redis: &mut redis::aio::MultiplexedConnection) -> Result<usize, String> {
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("notify.user.*")
        .query_async(redis)
        .await
        .map_err(|e| e.to_string())?;
    Ok(channels.len())
}

/// Waits until Redis (the test's own) has subscribers for exactly `n` user channels.
async fn user_channels_become(redis: &redis::aio::MultiplexedConnection, n: usize) {
    eventually(
        Duration::from_secs(30),
        &format!("{n} user channels subscribed"),
        || {
            let mut redis = redis.clone();
            async move {
                match user_channels(&mut redis).await? {
                    count if count == n => Ok(()),
                    count => Err(format!("{count} channels")),
                }
            }
        },
    )
    .await;
}

/// The hub's connection killed: it resubscribes every user's channel, more of them than
/// one batch holds, and every socket gets what was published meanwhile, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnect_every_users_channel_is_subscribed_again() {
    let redis_server = RedisServer::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.redis_url = redis_server.url_for(Principal::CommandApi);
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let users: Vec<Uuid> = (0..BATCH + 20).map(|_| Uuid::new_v4()).collect();
    let mut sockets = join_all(users.iter().map(|&user| {
        let app = &app;
        async move {
            let token = app.token(user, &["user"]);
            connect(app, Connect::header(&token)).await
        }
    }))
    .await;
    let mut admin = redis::Client::open(redis_server.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    user_channels_become(&admin, users.len()).await;

    let killed = kill_pubsub_clients(&mut admin).await;
    assert_eq!(killed, 1, "the hub's subscription");
    let mut notifier = Notifier::new(&app).await;
    let mut missed = Vec::new();
    for &user in &users {
        missed.push(
            notifier
                .send(user, json!({ "while": "resubscribing" }))
                .await,
        );
    }
    user_channels_become(&admin, users.len()).await;
    let frames = join_all(sockets.iter_mut().map(Socket::next)).await;
    for (frame, offset) in frames.iter().zip(&missed) {
        assert_eq!(frame["offset"], offset.as_str(), "{frame}");
    }
    let mut live = Vec::new();
    for &user in &users {
        live.push(
            notifier
                .send(user, json!({ "after": "resubscribing" }))
                .await,
        );
    }
    let frames = join_all(sockets.iter_mut().map(Socket::next)).await;
    for (frame, offset) in frames.iter().zip(&live) {
        assert_eq!(frame["offset"], offset.as_str(), "{frame}");
    }
    app.stop().await;
}
