//! Notifications end to end (PROMISES P10, P11, P17's WebSocket part): the relay turns
//! events into per-user notifications on Redis, and the hub delivers them to the sockets
//! of that user only, once each, in order, across reconnects, relay crashes and Redis
//! restarts; it refuses what it must and sheds slow clients without slowing others.

use std::collections::BTreeMap;
use std::time::Duration;

use dev_issuer::TokenRequest;
use keel_tests::notifications::{
    Connect, Notifier, RunningRelay, Socket, assert_each_comment_once, channel_subscribers,
    connect, kill_pubsub_clients, positions_of, try_connect,
};
use keel_tests::principals::Principal;
use keel_tests::redis_server::RedisServer;
use keel_tests::test_app::{comment_as, mint, test_config};
use keel_tests::worker_process::WorkerProcess;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
use notify::HISTORY_LEN;
use rand::Rng;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

fn user_token(app: &TestApp) -> (Uuid, String) {
    let user = Uuid::new_v4();
    (user, app.token(user, &["user"]))
}

/// Proves the user's sockets received nothing more: a marker sent now must be the next
/// frame of each. Returns the marker's offset.
async fn assert_nothing_more(
    notifier: &mut Notifier,
    user: Uuid,
    sockets: &mut [&mut Socket],
) -> String {
    let marker = Uuid::new_v4().to_string();
    let offset = notifier.send(user, json!({ "marker": marker })).await;
    for socket in sockets {
        let next = socket.next().await;
        assert_eq!(
            next["data"]["marker"], marker,
            "an unexpected frame: {next}"
        );
    }
    offset
}

#[tokio::test]
async fn the_relay_notifies_post_authors_and_users_whose_roles_change() {
    let app = TestApp::spawn().await.unwrap();
    let relay = RunningRelay::start(&app).await;
    let (author, author_token) = app.register("Ada Author").await;
    let (_, reader_token) = app.register("Rita Reader").await;
    let post = app.published_post(&author_token).await;
    let mut socket = connect(&app, Connect::header(&author_token)).await;

    // The author's own comment and like notify nobody; the reader's do.
    let comments = format!("/api/posts/{post}/comments");
    let own = app
        .send(
            Method::POST,
            &comments,
            &author_token,
            json!({"body": "mine"}),
        )
        .await;
    assert_eq!(own.status(), 201);
    let own_like = app
        .request(
            Method::PUT,
            &format!("/api/posts/{post}/like"),
            &author_token,
        )
        .send()
        .await
        .unwrap();
    assert!(own_like.status().is_success());
    let long_body = "x".repeat(500);
    let response = app
        .send(
            Method::POST,
            &comments,
            &reader_token,
            json!({"body": long_body}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let comment: Value = response.json().await.unwrap();

    let frame = socket.next().await;
    assert_eq!(frame["type"], "comment.added", "{frame}");
    assert_eq!(frame["data"]["post_id"], post.to_string());
    assert_eq!(frame["data"]["comment_id"], comment["comment_id"]);
    assert_eq!(frame["data"]["by"]["name"], "Rita Reader");
    let excerpt = frame["data"]["excerpt"].as_str().unwrap();
    assert!(
        excerpt.chars().count() <= 141 && excerpt.ends_with('…'),
        "{excerpt}"
    );
    for field in ["offset", "id", "time", "event_id"] {
        assert!(
            frame[field].as_str().is_some_and(|v| !v.is_empty()),
            "{field}: {frame}"
        );
    }

    let liked = app
        .request(
            Method::PUT,
            &format!("/api/posts/{post}/like"),
            &reader_token,
        )
        .send()
        .await
        .unwrap();
    assert!(liked.status().is_success(), "{}", liked.status());
    let frame = socket.next().await;
    assert_eq!(frame["type"], "post.liked", "{frame}");
    assert_eq!(
        frame["data"],
        json!({"post_id": post, "by": {"id": frame["data"]["by"]["id"], "name": "Rita Reader"}})
    );

    let roles = app
        .send(
            Method::PUT,
            &format!("/api/users/{author}/roles"),
            &app.admin_token(),
            json!({"roles": ["user", "admin"]}),
        )
        .await;
    assert!(roles.status().is_success(), "{}", roles.status());
    let frame = socket.next().await;
    assert_eq!(frame["type"], "user.role_changed", "{frame}");
    assert_eq!(frame["data"]["roles"], json!(["user", "admin"]));

    relay.stop().await;
    app.stop().await;
}

/// P10: 50 users with two sockets each (one by header, one by subprotocol) spread over
/// three hub instances; 10,000 notifications to random users whose payloads name other
/// users' ids and channels. Every socket gets exactly its user's, in order.
#[tokio::test]
async fn a_user_only_ever_receives_its_own_notifications() {
    const USERS: usize = 50;
    const NOTIFICATIONS: u32 = 10_000;
    let first = TestApp::spawn().await.unwrap();
    let mut hubs = vec![first];
    for _ in 0..2 {
        let jwks = JwksServer::start().await.unwrap();
        let mut config = test_config(hubs[0].database_url.clone(), &jwks);
        config.connections.stream = hubs[0].stream.clone();
        config.connections.subject_prefix = hubs[0].subject_prefix.clone();
        hubs.push(TestApp::spawn_with(config, jwks).await.unwrap());
    }
    let users: Vec<(Uuid, String)> = (0..USERS).map(|_| user_token(&hubs[0])).collect();
    let mut notifier = Notifier::new(&hubs[0]).await;
    let mut sent: BTreeMap<Uuid, Vec<u32>> = BTreeMap::new();
    let mut rng = rand::thread_rng();
    let mut plan = Vec::new();
    for seq in 0..NOTIFICATIONS {
        let to = users[rng.gen_range(0..USERS)].0;
        let other = users[rng.gen_range(0..USERS)].0;
        sent.entry(to).or_default().push(seq);
        plan.push((to, json!({ "to": to, "seq": seq, "sub": other, "channel": format!("notify.user.{other}") })));
    }
    // Each socket reads in its own task while the notifications go out.
    let mut readers = Vec::new();
    for (i, (user, token)) in users.iter().enumerate() {
        let expected = sent.get(user).map_or(0, Vec::len);
        for (j, how) in [Connect::header(token), Connect::subprotocol(token)]
            .into_iter()
            .enumerate()
        {
            let mut socket = connect(&hubs[(2 * i + j) % hubs.len()], how).await;
            let user = *user;
            readers.push(tokio::spawn(async move {
                let frames = socket.take(expected).await;
                (user, socket, frames)
            }));
        }
    }
    for (to, data) in plan {
        notifier.send(to, data).await;
    }
    let mut sockets: BTreeMap<Uuid, Vec<Socket>> = BTreeMap::new();
    for reader in readers {
        let (user, socket, frames) = reader.await.unwrap();
        let got: Vec<u32> = frames
            .iter()
            .map(|f| {
                assert_eq!(
                    f["data"]["to"],
                    user.to_string(),
                    "a socket of {user} got {f}"
                );
                f["data"]["seq"].as_u64().unwrap() as u32
            })
            .collect();
        assert_eq!(
            Some(&got),
            sent.get(&user).or(Some(&Vec::new())),
            "a socket of {user}"
        );
        sockets.entry(user).or_default().push(socket);
    }
    for (user, sockets) in &mut sockets {
        let mut sockets: Vec<&mut Socket> = sockets.iter_mut().collect();
        assert_nothing_more(&mut notifier, *user, &mut sockets).await;
    }
    let mut hubs = hubs.into_iter();
    let first = hubs.next().unwrap();
    for hub in hubs {
        hub.stop_keeping_stream().await;
    }
    first.stop().await;
}

/// The relay's consumer, as JetStream sees it: (pending, acknowledgements pending).
async fn relay_consumer(app: &TestApp) -> Result<(u64, usize), String> {
    let nats = keel_tests::principals::nats_connect(&app.nats_admin_url())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        async_nats::jetstream::new(nats)
            .get_stream(&app.stream)
            .await
            .map_err(|e| e.to_string())?
            .get_consumer(relay::CONSUMER)
            .await
            .map_err(|e| e.to_string())?;
    let info = consumer.info().await.map_err(|e| e.to_string())?;
    Ok((info.num_pending, info.num_ack_pending))
}

/// Two relay binaries (one active, one waiting on the lock); three times, while four
/// writers add comments, both are frozen until the active one holds unacknowledged
/// events, then one is SIGKILLed. Every comment notifies the author exactly once, in
/// the order of the log.
#[tokio::test]
async fn relays_killed_mid_stream_deliver_every_notification_exactly_once_in_order() {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let app = TestApp::spawn().await.unwrap();
    let (author, author_token) = app.register("Ada Author").await;
    let post = app.published_post(&author_token).await;
    let mut socket = connect(&app, Connect::header(&author_token)).await;
    let mut relays = [
        WorkerProcess::spawn("relay", &app),
        WorkerProcess::spawn("relay", &app),
    ];
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (_, token) = app.register(&format!("Writer {w}")).await;
        let (client, base) = (app.client.clone(), app.base_url.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                comment_as(&client, &base, post, &token, &format!("comment {w}.{i}")).await;
            }
        }));
    }
    let total = WRITERS * PER_WRITER;
    let reader = tokio::spawn(async move {
        let frames = socket.take(total).await;
        (socket, frames)
    });

    for round in 0..3 {
        for relay in &relays {
            relay.signal("STOP");
        }
        eventually(
            Duration::from_secs(60),
            "the frozen relay holds unacknowledged events",
            || async {
                match relay_consumer(&app).await? {
                    (_, in_flight) if in_flight > 0 => Ok(()),
                    state => Err(format!("(pending, unacknowledged) = {state:?}")),
                }
            },
        )
        .await;
        let victim = round % 2;
        relays[1 - victim].signal("CONT");
        std::mem::replace(&mut relays[victim], WorkerProcess::spawn("relay", &app)).kill();
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let (mut socket, frames) = reader.await.unwrap();
    assert_each_comment_once(&frames, total);
    let positions = positions_of(&app.pool, "comment.added").await;
    let order: Vec<i64> = frames
        .iter()
        .map(|f| positions[f["event_id"].as_str().unwrap()])
        .collect();
    assert!(
        order.is_sorted(),
        "notifications out of log order: {order:?}"
    );

    // Once the relay has acknowledged everything, nothing else may arrive.
    eventually(
        Duration::from_secs(60),
        "the relay acknowledged every event",
        || async {
            match relay_consumer(&app).await? {
                (0, 0) => Ok(()),
                state => Err(format!("(pending, unacknowledged) = {state:?}")),
            }
        },
    )
    .await;
    let mut notifier = Notifier::new(&app).await;
    assert_nothing_more(&mut notifier, author, &mut [&mut socket]).await;
    app.stop().await;
}

/// P11: a client that reconnects with the last offset it saw gets exactly what it
/// missed, in order, then live ones, by header and by subprotocol.
#[tokio::test]
async fn reconnecting_with_the_last_offset_recovers_exactly_the_missed_ones() {
    let app = TestApp::spawn().await.unwrap();
    let (user, token) = user_token(&app);
    let mut notifier = Notifier::new(&app).await;
    let mut socket = connect(&app, Connect::header(&token)).await;
    let mut offsets = Vec::new();
    for i in 0..5 {
        offsets.push(notifier.send(user, json!({ "n": i })).await);
    }
    let seen = socket.take(5).await;
    let last = seen[4]["offset"].as_str().unwrap().to_owned();
    assert_eq!(last, offsets[4]);
    socket.close().await;

    for i in 5..12 {
        offsets.push(notifier.send(user, json!({ "n": i })).await);
    }
    let mut socket = connect(&app, Connect::header(&token).resuming(&last)).await;
    let recovered = socket.take(7).await;
    let got: Vec<&str> = recovered
        .iter()
        .map(|f| f["offset"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        offsets[5..12]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let live = notifier.send(user, json!({ "n": 12 })).await;
    assert_eq!(socket.next().await["offset"], live.as_str());
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;

    // Browsers resume by subprotocol.
    let mut browser = connect(&app, Connect::subprotocol(&token).resuming(&offsets[9])).await;
    assert_eq!(browser.protocol.as_deref(), Some("keel.v1"));
    let recovered = browser.take(3).await;
    assert_eq!(recovered[0]["offset"], offsets[10].as_str());
    assert_eq!(recovered[1]["offset"], offsets[11].as_str());
    assert_eq!(recovered[2]["offset"], live.as_str());
    app.stop().await;
}

/// Notifications published while a client reconnects reach it once: none lost between
/// history and live, none twice.
#[tokio::test]
async fn recovery_and_live_delivery_meet_without_gap_or_duplicate() {
    const TOTAL: usize = 200;
    let app = TestApp::spawn().await.unwrap();
    let (user, token) = user_token(&app);
    let mut notifier = Notifier::new(&app).await;
    let mut offsets = Vec::new();
    for i in 0..50 {
        offsets.push(notifier.send(user, json!({ "n": i })).await);
    }
    let publisher = tokio::spawn(async move {
        let mut later = Vec::new();
        for i in 50..TOTAL {
            later.push(notifier.send(user, json!({ "n": i })).await);
        }
        later
    });
    let mut socket = connect(&app, Connect::header(&token).resuming(&offsets[9])).await;
    let frames = socket.take(TOTAL - 10).await;
    offsets.extend(publisher.await.unwrap());
    let got: Vec<&str> = frames
        .iter()
        .map(|f| f["offset"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        offsets[10..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let mut notifier = Notifier::new(&app).await;
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;
    app.stop().await;
}

#[tokio::test]
async fn an_offset_the_history_no_longer_covers_is_reported_as_incomplete() {
    let app = TestApp::spawn().await.unwrap();
    let (user, token) = user_token(&app);
    let mut notifier = Notifier::new(&app).await;
    let first = notifier.send(user, json!({ "n": 0 })).await;
    let mut last = first.clone();
    for i in 1..=HISTORY_LEN + 10 {
        last = notifier.send(user, json!({ "n": i })).await;
    }
    let mut socket = connect(&app, Connect::header(&token).resuming(&first)).await;
    assert_eq!(socket.next().await, json!({"type": "recovery.incomplete"}));
    let kept = socket.take(HISTORY_LEN).await;
    assert_eq!(kept[0]["data"]["n"], 11, "the oldest kept notification");
    assert_eq!(kept[HISTORY_LEN - 1]["offset"], last.as_str());
    let last = assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;

    // An offset of another epoch (Redis lost its data since) is incomplete too.
    let mut other = connect(&app, Connect::header(&token).resuming("zz9.1-0")).await;
    assert_eq!(other.next().await, json!({"type": "recovery.incomplete"}));

    // An offset at the newest kept notification is complete.
    let mut socket = connect(&app, Connect::header(&token).resuming(&last)).await;
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;
    app.stop().await;
}

#[tokio::test]
async fn a_notification_published_twice_reaches_a_socket_once() {
    let app = TestApp::spawn().await.unwrap();
    let (user, token) = user_token(&app);
    let mut socket = connect(&app, Connect::header(&token)).await;
    let mut notifier = Notifier::new(&app).await;
    let notification = Notifier::notification(user, json!({ "once": true }));
    assert!(notifier.publish(&notification).await.is_some());
    assert_eq!(
        notifier.publish(&notification).await,
        None,
        "a redelivery is dropped"
    );
    assert_eq!(socket.next().await["data"]["once"], true);
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;
    app.stop().await;
}

#[tokio::test]
async fn sockets_without_valid_credentials_or_from_foreign_origins_are_refused() {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.allowed_origins = vec!["https://app.example".to_owned()];
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let (user, token) = user_token(&app);
    let nothing = Connect {
        auth: keel_tests::notifications::Auth::Nothing,
        ..Connect::header("")
    };

    let refused = try_connect(&app.base_url, nothing)
        .await
        .err()
        .expect("no token is refused");
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.body["status"], 401,
        "a problem document: {:?}",
        refused.body
    );

    let expired = mint(TokenRequest {
        sub: user.to_string(),
        roles: vec!["user".to_owned()],
        ttl_seconds: -600,
        ..Default::default()
    });
    let refused = try_connect(&app.base_url, Connect::header(&expired))
        .await
        .err()
        .expect("an expired token is refused");
    assert_eq!(refused.status, 401);
    let refused = try_connect(&app.base_url, Connect::subprotocol(&expired))
        .await
        .err()
        .expect("an expired token is refused");
    assert_eq!(refused.status, 401);
    let refused = try_connect(&app.base_url, Connect::subprotocol("not-a-jwt"))
        .await
        .err()
        .expect("garbage is refused");
    assert_eq!(refused.status, 401);

    let query = format!("access_token={token}");
    let in_query = Connect {
        query: Some(&query),
        ..nothing
    };
    let refused = try_connect(&app.base_url, in_query)
        .await
        .err()
        .expect("a query-string token is refused");
    assert_eq!(refused.status, 401);
    let with_header_too = Connect {
        query: Some(&query),
        ..Connect::header(&token)
    };
    let refused = try_connect(&app.base_url, with_header_too)
        .await
        .err()
        .expect("a query-string token is refused");
    assert_eq!(refused.status, 401);

    let foreign = Connect {
        origin: Some("https://evil.example"),
        ..Connect::subprotocol(&token)
    };
    let refused = try_connect(&app.base_url, foreign)
        .await
        .err()
        .expect("a foreign Origin is refused");
    assert_eq!(refused.status, 403);
    let allowed = Connect {
        origin: Some("https://app.example"),
        ..Connect::subprotocol(&token)
    };
    let socket = connect(&app, allowed).await;
    assert_eq!(
        socket.protocol.as_deref(),
        Some("keel.v1"),
        "only keel.v1 is echoed"
    );

    let refused = try_connect(
        &app.base_url,
        Connect::header(&token).resuming("not-an-offset"),
    )
    .await
    .err()
    .expect("a bad offset is refused");
    assert_eq!(refused.status, 422);

    let plain = app
        .request(Method::GET, "/ws/notifications", &token)
        .send()
        .await
        .unwrap();
    assert!(plain.status().is_client_error(), "{}", plain.status());
    assert_eq!(plain.headers()["content-type"], "application/problem+json");
    app.stop().await;
}

/// A gauge or counter from `/metrics`.
async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = reqwest::get(app.internal("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// P17: a client that stops reading never slows the others (fan-out never waits on a
/// socket), and once it is too far behind it is disconnected (1013).
#[tokio::test]
async fn a_client_that_stops_reading_slows_nobody_and_is_disconnected() {
    let app = TestApp::spawn().await.unwrap();
    let (slow_user, slow_token) = user_token(&app);
    let (fast_user, fast_token) = user_token(&app);
    let slow = Connect {
        small_receive_buffer: true,
        ..Connect::header(&slow_token)
    };
    let mut slow_socket = connect(&app, slow).await;
    let mut fast_socket = connect(&app, Connect::header(&fast_token)).await;
    let mut notifier = Notifier::new(&app).await;

    // 6.4 MB the slow client does not read: more than the socket buffers hold, so its
    // session is stuck writing, yet fewer frames than its queue holds.
    let padding = "p".repeat(64 * 1024);
    for i in 0..100u32 {
        notifier
            .send(slow_user, json!({ "n": i, "padding": padding }))
            .await;
    }
    // The fast client gets all of its notifications meanwhile, while the slow one is
    // still connected: had fan-out waited on the stuck socket, these could not arrive
    // until it was dropped.
    for i in 0..300u32 {
        notifier.send(fast_user, json!({ "n": i })).await;
    }
    let frames = fast_socket.take(300).await;
    let got: Vec<u64> = frames
        .iter()
        .map(|f| f["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..300).collect::<Vec<u64>>());
    assert_eq!(metric(&app, "keel_ws_evicted_total").await, 0);
    assert_eq!(metric(&app, "keel_ws_sockets").await, 2);

    // Further behind than its queue allows: disconnected.
    for i in 100..500u32 {
        notifier.send(slow_user, json!({ "n": i })).await;
    }
    eventually(
        Duration::from_secs(30),
        "the slow socket is evicted",
        || async {
            match metric(&app, "keel_ws_evicted_total").await {
                1 => Ok(()),
                other => Err(format!("keel_ws_evicted_total {other}")),
            }
        },
    )
    .await;
    assert_eq!(metric(&app, "keel_ws_sockets").await, 1);
    let code = slow_socket.closed(Duration::from_secs(60)).await;
    assert!(matches!(code, Some(1013) | None), "closed with {code:?}");
    assert_nothing_more(&mut notifier, fast_user, &mut [&mut fast_socket]).await;
    app.stop().await;
}

/// Clients only ever answer pings: a small frame is ignored, an oversized one ends the
/// socket (the server reads at most 4 KiB).
#[tokio::test]
async fn an_oversized_client_frame_ends_the_socket() {
    let app = TestApp::spawn().await.unwrap();
    let (user, token) = user_token(&app);
    let mut socket = connect(&app, Connect::header(&token)).await;
    let mut notifier = Notifier::new(&app).await;
    socket.say("hello".to_owned()).await;
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;
    socket.say("x".repeat(64 * 1024)).await;
    let code = socket.closed(Duration::from_secs(30)).await;
    assert!(matches!(code, Some(1009) | None), "closed with {code:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_socket_closes_with_4001_when_its_token_expires() {
    let app = TestApp::spawn().await.unwrap();
    let short = mint(TokenRequest {
        sub: Uuid::new_v4().to_string(),
        roles: vec!["user".to_owned()],
        ttl_seconds: 2,
        ..Default::default()
    });
    let mut socket = connect(&app, Connect::subprotocol(&short)).await;
    assert_eq!(socket.closed(Duration::from_secs(30)).await, Some(4001));
    app.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_1001() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = user_token(&app);
    let mut socket = connect(&app, Connect::header(&token)).await;
    let stopping = tokio::spawn(app.stop());
    assert_eq!(socket.closed(Duration::from_secs(30)).await, Some(1001));
    stopping.await.unwrap();
}

/// The hub's subscription dropped (Redis closes it) again and again while notifications
/// are published: each resubscription makes the sockets read what they missed, so a
/// connected client still gets every notification once, in order.
#[tokio::test]
async fn a_dropped_subscription_loses_nothing() {
    let redis_server = RedisServer::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.redis_url = redis_server.url_for(Principal::CommandApi);
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let (user, token) = user_token(&app);
    let mut socket = connect(&app, Connect::header(&token)).await;
    let reader = tokio::spawn(async move {
        let frames = socket.take(300).await;
        (socket, frames)
    });
    let mut notifier = Notifier::new(&app).await;
    let redis = redis::Client::open(redis_server.url.as_str()).unwrap();
    let mut admin = redis.get_multiplexed_async_connection().await.unwrap();
    let mut offsets = Vec::new();
    for i in 0..300 {
        offsets.push(notifier.send(user, json!({ "n": i })).await);
        if i % 50 == 25 {
            eventually(Duration::from_secs(30), "the hub is subscribed", || {
                let mut admin = admin.clone();
                async move {
                    let patterns: i64 = redis::cmd("PUBSUB")
                        .arg("NUMPAT")
                        .query_async(&mut admin)
                        .await
                        .map_err(|e| e.to_string())?;
                    let channels = channel_subscribers(&mut admin, user)
                        .await
                        .map_err(|e| e.to_string())?;
                    // policy.invalidate.* and the user's channel, on one connection.
                    if patterns == 1 && channels == 1 {
                        Ok(())
                    } else {
                        Err(format!("{patterns} patterns, {channels} channel"))
                    }
                }
            })
            .await;
            let killed = kill_pubsub_clients(&mut admin).await;
            assert_eq!(killed, 1, "the hub's subscription");
        }
    }
    let (mut socket, frames) = reader.await.unwrap();
    let got: Vec<&str> = frames
        .iter()
        .map(|f| f["offset"].as_str().unwrap())
        .collect();
    assert_eq!(got, offsets.iter().map(String::as_str).collect::<Vec<_>>());
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;
    app.stop().await;
}

/// P9's hub part: Redis killed and restarted empty. The hub resubscribes on its own, a
/// connected client learns that its history is gone, then receives new notifications.
#[tokio::test]
async fn the_hub_resubscribes_after_redis_restarts() {
    let mut redis_server = RedisServer::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.redis_url = redis_server.url_for(Principal::CommandApi);
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let (user, token) = user_token(&app);
    let mut notifier = Notifier::new(&app).await;
    let before = notifier.send(user, json!({ "n": 0 })).await;
    let mut socket = connect(&app, Connect::header(&token).resuming("x.0-0")).await;
    assert_eq!(socket.next().await, json!({"type": "recovery.incomplete"}));
    assert_eq!(socket.next().await["offset"], before.as_str());

    redis_server.stop();
    let refused = try_connect(&app.base_url, Connect::header(&token))
        .await
        .err()
        .expect("no socket can start without its history");
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    redis_server.start_again().await.unwrap();
    let after = notifier
        .send_when_up(user, json!({ "n": 1 }), Duration::from_secs(30))
        .await;
    assert_eq!(
        socket.next().await,
        json!({"type": "recovery.incomplete"}),
        "the old history is gone"
    );
    assert_eq!(socket.next().await["offset"], after.as_str());
    assert_nothing_more(&mut notifier, user, &mut [&mut socket]).await;
    app.stop().await;
}
