//! Events on the bus (PROMISES P2, P3, P4, P19): the JetStream stream holds every
//! committed event exactly once, in log order, as a CloudEvent, across NATS outages,
//! publisher crashes and leader changes.

use std::time::{Duration, Instant};

use futures::future::join_all;
use keel_tests::api_process::ApiProcess;
use keel_tests::nats_server::NatsServer;
use keel_tests::principals::{Principal, nats_as, nats_connect};
use keel_tests::stream::{assert_equals_log, count};
use keel_tests::test_app::test_config;
use keel_tests::{
    JwksServer, TestApp, eventually, fresh_database, prefill, unique_name, unique_subject_prefix,
};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn the_stream_equals_the_log_after_a_burst_of_concurrent_commands() {
    let app = TestApp::spawn().await.unwrap();
    let writers = (0..16).map(|i| {
        let app = &app;
        async move {
            let (id, token) = app.register(&format!("User {i}")).await;
            for n in 0..5 {
                let path = format!("/api/users/{id}");
                let response = app
                    .send(
                        Method::PATCH,
                        &path,
                        &token,
                        json!({"name": format!("Name {n}")}),
                    )
                    .await;
                assert_eq!(response.status(), 200);
            }
            app.published_post(&token).await;
        }
    });
    join_all(writers).await;
    assert_eq!(app.event_count().await, 16 * 8);
    let nats = app.nats_admin_url();
    assert_equals_log(&nats, &app.stream, &app.pool, Duration::from_secs(20)).await;
    app.stop().await;
}

#[tokio::test]
async fn commands_succeed_while_nats_is_down_and_all_arrive_once_in_order_after() {
    let (mut nats, app, config) = app_on_own_nats().await;
    let stream = config.connections.stream;
    let (id, token) = app.register("Ada").await;

    nats.stop();
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz reports NATS down");
    for n in 0..100 {
        let response = app
            .send(
                Method::PATCH,
                &format!("/api/users/{id}"),
                &token,
                json!({"name": format!("Name {n}")}),
            )
            .await;
        assert_eq!(
            response.status(),
            200,
            "commands keep succeeding while NATS is down"
        );
    }
    let metrics = app
        .client
        .get(app.internal("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let depth: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keel_outbox_depth "))
        .and_then(|v| v.parse().ok())
        .expect("keel_outbox_depth in /metrics");
    assert!(
        depth >= 100,
        "the outbox holds the commands' events: depth {depth}"
    );

    nats.start_again().await.unwrap();
    assert_equals_log(&nats.url, &stream, &app.pool, Duration::from_secs(30)).await;
    app.stop().await;
}

/// A database, a nats-server of the test's own, and the environment for `command-api`
/// processes sharing them (for tests that SIGKILL or SIGSTOP the real binary).
struct Cluster {
    pool: sqlx::PgPool,
    nats: NatsServer,
    stream: String,
    env: Vec<(&'static str, String)>,
    _jwks: JwksServer,
}

impl Cluster {
    async fn start() -> Self {
        let database_url = fresh_database().await.unwrap();
        let pool = events::database::open(&database_url, None, 4)
            .await
            .unwrap();
        let nats = NatsServer::start().await.unwrap();
        let jwks = JwksServer::start().await.unwrap();
        let stream = unique_name("EVENTS_TEST");
        let env = vec![
            ("DATABASE_URL", database_url),
            ("NATS_URL", nats.url_for(Principal::CommandApi)),
            ("KEEL_JWKS_URL", jwks.url.clone()),
            (
                "KEEL_JWT_ISSUER",
                keel_tests::jwks_server::issuer().issuer().to_owned(),
            ),
            ("KEEL_JWT_AUDIENCE", dev_issuer::DEFAULT_AUDIENCE.to_owned()),
            ("KEEL_STREAM", stream.clone()),
            ("KEEL_SUBJECT_PREFIX", unique_subject_prefix()),
            ("KEEL_DB_POOL_SIZE", "4".to_owned()),
        ];
        Self {
            pool,
            nats,
            stream,
            env,
            _jwks: jwks,
        }
    }
}

/// The instance's `keel_publisher_leader` gauge (-1 when it does not answer).
async fn leader_gauge(api: &ApiProcess) -> f64 {
    api.metric("keel_publisher_leader").await.unwrap_or(-1.0)
}

/// Waits until `api` reports itself the active publisher.
async fn leads(api: &ApiProcess, within: Duration, what: &str) {
    eventually(within, what, || async {
        let gauge = leader_gauge(api).await;
        if gauge == 1.0 {
            Ok(())
        } else {
            Err(format!("leader gauge {gauge}"))
        }
    })
    .await;
}

/// An in-process command API publishing to a nats-server of the test's own.
async fn app_on_own_nats() -> (NatsServer, TestApp, command_api::Config) {
    let nats = NatsServer::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.nats_url = nats.url_for(Principal::CommandApi);
    let app = TestApp::spawn_with(config.clone(), jwks).await.unwrap();
    (nats, app, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_killed_mid_drain_neither_loses_nor_duplicates() {
    let Cluster {
        pool,
        nats,
        stream,
        env,
        _jwks,
    } = Cluster::start().await;
    prefill(&pool, 20_000).await.unwrap();

    // Kill the publisher as soon as it has published something, while events remain.
    let mut kills_mid_drain = 0;
    for _ in 0..5 {
        let before = count(&nats.url, &stream).await.unwrap();
        if before >= 20_000 {
            break;
        }
        let api = ApiProcess::spawn(&env).await.unwrap();
        let killed_at = eventually(
            Duration::from_secs(30),
            "the publisher makes progress",
            || {
                let (url, stream) = (nats.url.clone(), stream.clone());
                async move {
                    let now = count(&url, &stream).await.map_err(|e| e.to_string())?;
                    if now > before {
                        Ok(now)
                    } else {
                        Err(format!("still {now}"))
                    }
                }
            },
        )
        .await;
        api.kill();
        if killed_at < 20_000 {
            kills_mid_drain += 1;
        }
    }
    assert!(
        kills_mid_drain >= 1,
        "the publisher was never killed mid-drain"
    );
    let _api = ApiProcess::spawn(&env).await.unwrap();
    assert_equals_log(&nats.url, &stream, &pool, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_publishes_at_a_time_and_another_takes_over_when_it_dies() {
    let Cluster {
        pool,
        nats,
        stream,
        env,
        _jwks,
    } = Cluster::start().await;
    let first = ApiProcess::spawn(&env).await.unwrap();
    let second = ApiProcess::spawn(&env).await.unwrap();

    let (a, b) = eventually(Duration::from_secs(10), "exactly one leader", || async {
        let (a, b) = (leader_gauge(&first).await, leader_gauge(&second).await);
        if a + b == 1.0 {
            Ok((a, b))
        } else {
            Err(format!("leader gauges {a} and {b}"))
        }
    })
    .await;
    prefill(&pool, 2_000).await.unwrap();
    assert_equals_log(&nats.url, &stream, &pool, Duration::from_secs(30)).await;

    let (dead, survivor) = if a == 1.0 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(b + a, 1.0);
    dead.kill();
    prefill(&pool, 2_000).await.unwrap();
    leads(&survivor, Duration::from_secs(10), "the survivor leads").await;
    assert_equals_log(&nats.url, &stream, &pool, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn a_lost_stream_is_rebuilt_from_the_log_on_request() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    for n in 0..5 {
        app.send(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &token,
            json!({"name": format!("N{n}")}),
        )
        .await;
    }
    let nats = app.nats_admin_url();
    assert_equals_log(&nats, &app.stream, &app.pool, Duration::from_secs(20)).await;

    // JetStream loses the stream (PROMISES P19); Postgres still has everything.
    let context = async_nats::jetstream::new(nats_connect(&nats).await.unwrap());
    context.delete_stream(&app.stream).await.unwrap();
    assert_eq!(count(&nats, &app.stream).await.unwrap(), 0);
    events::outbox::request_republish(&app.pool, domain::ids::Position(1))
        .await
        .unwrap();
    assert_equals_log(&nats, &app.stream, &app.pool, Duration::from_secs(20)).await;
    app.stop().await;
}

#[tokio::test]
async fn the_stream_is_provisioned_durable() {
    let app = TestApp::spawn().await.unwrap();
    let context = async_nats::jetstream::new(nats_connect(&app.nats_admin_url()).await.unwrap());
    let mut stream = context.get_stream(&app.stream).await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    use async_nats::jetstream::stream::{DiscardPolicy, StorageType};
    assert_eq!(config.storage, StorageType::File);
    assert!(
        config.duplicate_window >= Duration::from_secs(120),
        "{:?}",
        config.duplicate_window
    );
    assert_eq!(
        config.discard,
        DiscardPolicy::New,
        "never silently drop unread events"
    );
    assert_eq!(
        (config.max_messages, config.max_bytes, config.max_age),
        (-1, -1, Duration::ZERO)
    );
    assert_eq!(config.subjects.len(), 1);
    assert!(config.subjects[0].ends_with(".>"));
    app.stop().await;
}

#[tokio::test]
async fn an_incompatible_stream_stops_the_start_with_a_clear_error() {
    let jwks = JwksServer::start().await.unwrap();
    let config = test_config(fresh_database().await.unwrap(), &jwks);
    let admin = nats_as(&config.connections.nats_url, Principal::Admin);
    let context = async_nats::jetstream::new(nats_connect(&admin).await.unwrap());
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: config.connections.stream.clone(),
            subjects: vec![format!("{}.>", config.connections.subject_prefix)],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap();
    let error = match command_api::build(config.clone()).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a memory-storage stream was accepted"),
    };
    assert!(
        error.contains("incompatible") && error.contains("memory"),
        "{error}"
    );
    context
        .delete_stream(&config.connections.stream)
        .await
        .unwrap();
}

#[tokio::test]
async fn projectors_tail_prints_the_stream_in_log_order() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    app.send(
        Method::PATCH,
        &format!("/api/users/{id}"),
        &token,
        json!({"name": "Ada L."}),
    )
    .await;
    assert_equals_log(
        &app.nats_url,
        &app.stream,
        &app.pool,
        Duration::from_secs(20),
    )
    .await;
    let binary = keel_tests::api_process::binary().with_file_name("projectors");
    let output = tokio::process::Command::new(binary)
        .args(["tail", "--count", "2", "--idle-secs", "10"])
        // An operator's tool (an ephemeral consumer): the admin's.
        .env("NATS_URL", app.nats_admin_url())
        .env("KEEL_STREAM", &app.stream)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("type=user.registered") && lines[0].starts_with("seq=1 "),
        "{text}"
    );
    assert!(
        lines[1].contains("type=user.updated") && lines[1].contains(&format!("stream=user-{id}")),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn publishing_resumes_after_a_nats_restart_that_forgot_the_last_message_id() {
    let (mut nats, app, config) = app_on_own_nats().await;
    let stream = config.connections.stream;
    let (id, token) = app.register("Ada").await;
    assert_equals_log(&nats.url, &stream, &app.pool, Duration::from_secs(20)).await;

    // After a restart the server rebuilds "last message id" only from messages inside
    // the duplicate window. Shrink the window so the last message falls outside it.
    let context = async_nats::jetstream::new(nats_connect(&nats.url).await.unwrap());
    let mut config = context
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.duplicate_window = Duration::from_millis(100);
    context.update_stream(config).await.unwrap();
    let stored_at = Instant::now();
    nats.stop();
    // The condition under test, not a wait for an effect: the window must have passed.
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(stored_at.elapsed())).await;
    nats.start_again().await.unwrap();

    let renamed = app
        .send(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &token,
            json!({"name": "After"}),
        )
        .await;
    assert_eq!(renamed.status(), 200);
    assert_equals_log(&nats.url, &stream, &app.pool, Duration::from_secs(30)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_stream_that_lost_its_tail_is_refilled_in_order() {
    let (mut nats, app, mut config) = app_on_own_nats().await;
    let (id, token) = app.register("Ada").await;
    for n in 0..4 {
        app.send(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &token,
            json!({"name": format!("N{n}")}),
        )
        .await;
    }
    assert_equals_log(
        &nats.url,
        &config.connections.stream,
        &app.pool,
        Duration::from_secs(20),
    )
    .await;
    let pool = app.pool.clone();
    app.stop_keeping_stream().await;

    // JetStream loses its last two messages, as when an OS crash beats its disk sync:
    // delete them, then restart the server (which forgets their ids too).
    let context = async_nats::jetstream::new(nats_connect(&nats.url).await.unwrap());
    let stream = context
        .get_stream(&config.connections.stream)
        .await
        .unwrap();
    for sequence in [4, 5] {
        stream.delete_message(sequence).await.unwrap();
    }
    nats.stop();
    nats.start_again().await.unwrap();
    assert_eq!(
        count(&nats.url, &config.connections.stream).await.unwrap(),
        3
    );

    // The next leader resumes from what the stream holds and publishes the rest again.
    let jwks = JwksServer::start().await.unwrap();
    config.jwks_url = jwks.url.clone();
    let second = TestApp::spawn_with(config, jwks).await.unwrap();
    assert_equals_log(&nats.url, &second.stream, &pool, Duration::from_secs(20)).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_loses_the_lead_and_the_stream_stays_exact() {
    let Cluster {
        pool,
        nats,
        stream,
        env,
        _jwks,
    } = Cluster::start().await;
    let first = ApiProcess::spawn(&env).await.unwrap();
    leads(&first, Duration::from_secs(10), "the first instance leads").await;
    let second = ApiProcess::spawn(&env).await.unwrap();

    first.signal("STOP");
    prefill(&pool, 2_000).await.unwrap();
    leads(
        &second,
        Duration::from_secs(20),
        "the second instance takes over",
    )
    .await;
    assert_equals_log(&nats.url, &stream, &pool, Duration::from_secs(30)).await;
    first.signal("CONT");
    prefill(&pool, 500).await.unwrap();
    assert_equals_log(&nats.url, &stream, &pool, Duration::from_secs(30)).await;
}
