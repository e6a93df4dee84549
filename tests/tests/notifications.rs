//! Notifications end to end (PROMISES P10, P11, P17's WebSocket part): the relay turns
//! events into per-user notifications on Redis, and the hub delivers them to the sockets
//! of that user only, once each, in order, across reconnects, relay crashes and Redis
//! restarts; it refuses what it must and sheds slow clients without slowing others.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use dev_issuer::{Alg, TokenRequest};
use events::notification::{HISTORY_LEN, Keys};
use keel_tests::notifications::{Connect, Notifier, RunningRelay, Socket, connect, try_connect};
use keel_tests::redis_server::RedisServer;
use keel_tests::test_app::{mint, test_config};
use keel_tests::worker_process::WorkerProcess;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
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

/// P10: 40 users with two sockets each, on two hub instances, one socket by header and
/// one by subprotocol; 1,200 notifications to random users whose payloads name other
/// users' ids and channels. Every socket gets exactly its user's, in order.
#[tokio::test]
async fn a_user_only_ever_receives_its_own_notifications() {
    let first = TestApp::spawn().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(first.database_url.clone(), &jwks);
    config.stream = first.stream.clone();
    config.subject_prefix = first.subject_prefix.clone();
    let second = TestApp::spawn_with(config, jwks).await.unwrap();

    let users: Vec<(Uuid, String)> = (0..40).map(|_| user_token(&first)).collect();
    let mut sockets = Vec::new();
    for (user, token) in &users {
        let by_header = connect(&first, Connect::header(token)).await;
        let by_subprotocol = connect(&second, Connect::subprotocol(token)).await;
        sockets.push((*user, by_header, by_subprotocol));
    }
    let mut notifier = Notifier::new(&first).await;
    let mut sent: BTreeMap<Uuid, Vec<u32>> = BTreeMap::new();
    let mut rng = rand::thread_rng();
    for seq in 0..1200u32 {
        let to = users[rng.gen_range(0..users.len())].0;
        let other = users[rng.gen_range(0..users.len())].0;
        notifier
            .send(to, json!({ "to": to, "seq": seq, "sub": other, "channel": format!("notify.user.{other}") }))
            .await;
        sent.entry(to).or_default().push(seq);
    }
    for (user, by_header, by_subprotocol) in &mut sockets {
        let expected = sent.get(user).cloned().unwrap_or_default();
        for socket in [&mut *by_header, &mut *by_subprotocol] {
            let frames = socket.take(expected.len()).await;
            let got: Vec<u32> = frames
                .iter()
                .map(|f| {
                    assert_eq!(f["data"]["to"], user.to_string(), "socket of {user}: {f}");
                    f["data"]["seq"].as_u64().unwrap() as u32
                })
                .collect();
            assert_eq!(
                got, expected,
                "socket of {user}: wrong notifications or order"
            );
        }
        assert_nothing_more(&mut notifier, *user, &mut [by_header, by_subprotocol]).await;
    }
    second.stop_keeping_stream().await;
    first.stop().await;
}

/// The relay binary SIGKILLed three times while comments are being written: every
/// comment notifies the post's author exactly once.
#[tokio::test]
async fn a_relay_killed_mid_stream_delivers_every_notification_exactly_once() {
    const COMMENTS: usize = 150;
    let app = TestApp::spawn().await.unwrap();
    let (author, author_token) = app.register("Ada Author").await;
    let (_, reader_token) = app.register("Rita Reader").await;
    let post = app.published_post(&author_token).await;
    let mut socket = connect(&app, Connect::header(&author_token)).await;
    let mut relay = WorkerProcess::spawn("relay", &app);

    let writer = {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/api/posts/{post}/comments")),
            reader_token.clone(),
        );
        tokio::spawn(async move {
            for i in 0..COMMENTS {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "body": format!("comment {i}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
            }
        })
    };
    let reader = tokio::spawn(async move {
        let frames = socket.take(COMMENTS).await;
        (socket, frames)
    });

    let redis = redis::Client::open(app.redis_url.as_str()).unwrap();
    let history = Keys::of(&app.stream).history(events::ids::UserId(author));
    for threshold in [20, 60, 100] {
        eventually(Duration::from_secs(60), "the relay makes progress", || {
            let (redis, history) = (redis.clone(), history.clone());
            async move {
                let mut connection = redis
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| e.to_string())?;
                let relayed: usize = redis::cmd("XLEN")
                    .arg(&history)
                    .query_async(&mut connection)
                    .await
                    .map_err(|e| e.to_string())?;
                if relayed >= threshold {
                    Ok(())
                } else {
                    Err(format!("{relayed} relayed"))
                }
            }
        })
        .await;
        relay.kill();
        relay = WorkerProcess::spawn("relay", &app);
    }
    writer.await.unwrap();
    let (mut socket, frames) = reader.await.unwrap();
    let comment_ids: HashSet<&str> = frames
        .iter()
        .map(|f| f["data"]["comment_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        comment_ids.len(),
        COMMENTS,
        "a notification was lost or duplicated"
    );
    let bodies: Vec<&str> = frames
        .iter()
        .map(|f| f["data"]["excerpt"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (0..COMMENTS).map(|i| format!("comment {i}")).collect();
    assert_eq!(bodies, expected, "notifications out of order");

    // Once the relay has acknowledged everything, nothing else may arrive.
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    eventually(
        Duration::from_secs(60),
        "the relay acknowledged every event",
        || {
            let jetstream = jetstream.clone();
            let stream = app.stream.clone();
            async move {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer = jetstream
                    .get_stream(&stream)
                    .await
                    .map_err(|e| e.to_string())?
                    .get_consumer(relay::CONSUMER)
                    .await
                    .map_err(|e| e.to_string())?;
                let info = consumer.info().await.map_err(|e| e.to_string())?;
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{} pending, {} unacked",
                        info.num_pending, info.num_ack_pending
                    ))
                }
            }
        },
    )
    .await;
    let mut notifier = Notifier::new(&app).await;
    assert_nothing_more(&mut notifier, author, &mut [&mut socket]).await;
    relay.kill();
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
        alg: Alg::Rs256,
        audience: None,
        email: None,
        name: None,
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

/// P17: a client that stops reading is disconnected (1013) and another client keeps
/// receiving every notification meanwhile.
#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_slows_nobody() {
    let app = TestApp::spawn().await.unwrap();
    let (slow_user, slow_token) = user_token(&app);
    let (fast_user, fast_token) = user_token(&app);
    let slow = Connect {
        small_receive_buffer: true,
        ..Connect::header(&slow_token)
    };
    let mut slow_socket = connect(&app, slow).await;
    let mut fast_socket = connect(&app, Connect::header(&fast_token)).await;
    let fast_reader = tokio::spawn(async move {
        let frames = fast_socket.take(300).await;
        (fast_socket, frames)
    });
    let mut notifier = Notifier::new(&app).await;
    let padding = "p".repeat(4096);
    for i in 0..3000u32 {
        notifier
            .send(slow_user, json!({ "n": i, "padding": padding }))
            .await;
        if i % 10 == 0 {
            notifier.send(fast_user, json!({ "n": i / 10 })).await;
        }
    }
    // The fast client got everything while the slow one had read nothing at all.
    let (_fast_socket, frames) = fast_reader.await.unwrap();
    let got: Vec<u64> = frames
        .iter()
        .map(|f| f["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (0..300).collect::<Vec<u64>>());

    eventually(
        Duration::from_secs(30),
        "the slow socket is evicted",
        || async {
            let metrics = reqwest::get(app.url("/metrics"))
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            if metrics.contains("keel_ws_evicted_total 1") {
                Ok(())
            } else {
                Err(metrics
                    .lines()
                    .filter(|l| l.starts_with("keel_ws"))
                    .collect::<Vec<_>>()
                    .join(", "))
            }
        },
    )
    .await;
    let code = slow_socket.closed(Duration::from_secs(60)).await;
    assert!(matches!(code, Some(1013) | None), "closed with {code:?}");
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
        alg: Alg::Rs256,
        audience: None,
        email: None,
        name: None,
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

/// P9's hub part: Redis killed and restarted empty. The hub resubscribes on its own, a
/// connected client learns that its history is gone, then receives new notifications.
#[tokio::test]
async fn the_hub_resubscribes_after_redis_restarts() {
    let mut redis_server = RedisServer::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.redis_url = redis_server.url.clone();
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
