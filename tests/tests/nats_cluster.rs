//! Keel on a three-node JetStream cluster (issue 13): the stream is replicated three
//! times (`KEEL_STREAM_REPLICAS=3`), every process is given all three nodes (`NATS_URL`,
//! comma-separated), and the node that leads the stream is SIGKILLed mid-load and later
//! started again. Every committed event is in the stream exactly once, in log order, and
//! the projections equal a fold of the log.

use std::time::Duration;

use futures::future::join_all;
use keel_tests::nats_cluster::NatsCluster;
use keel_tests::principals::Principal;
use keel_tests::projections::{self, Running};
use keel_tests::stream::{assert_equals_log, count};
use keel_tests::test_app::test_config;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
use reqwest::Method;
use serde_json::json;

const WRITERS: usize = 8;
const UPDATES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_mid_load_loses_and_duplicates_nothing() {
    let mut cluster = NatsCluster::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.nats_url = cluster.url_for(Principal::CommandApi);
    config.stream_replicas = 3;
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let admin = cluster.url_for(Principal::Admin);
    let running = Running::start(&app).await;

    let mut users = Vec::with_capacity(WRITERS);
    for i in 0..WRITERS {
        users.push(app.register(&format!("Writer {i}")).await);
    }
    eventually(
        Duration::from_secs(30),
        "the stream is replicated on three nodes",
        || {
            let (admin, stream) = (admin.clone(), app.stream.clone());
            async move {
                let client = keel_tests::principals::nats_connect(&admin)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut handle = async_nats::jetstream::new(client)
                    .get_stream(&stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let info = handle.info().await.map_err(|e| e.to_string())?;
                match (info.config.num_replicas, &info.cluster) {
                    (3, Some(cluster)) if cluster.leader.is_some() => Ok(()),
                    (replicas, _) => Err(format!("{replicas} replicas, leader unknown")),
                }
            }
        },
    )
    .await;

    let load = users.iter().map(|(id, token)| {
        let app = &app;
        async move {
            for n in 0..UPDATES {
                let response = app
                    .send(
                        Method::PATCH,
                        &format!("/api/users/{id}"),
                        token,
                        json!({"name": format!("Name {n}")}),
                    )
                    .await;
                assert_eq!(response.status(), 200, "commands succeed through the kill");
            }
        }
    });
    let kill = async {
        eventually(
            Duration::from_secs(30),
            "the load reaches the stream",
            || {
                let (admin, stream) = (admin.clone(), app.stream.clone());
                async move {
                    let stored = count(&admin, &stream).await.map_err(|e| e.to_string())?;
                    if stored >= (WRITERS * UPDATES / 4) as u64 {
                        Ok(())
                    } else {
                        Err(format!("{stored} events in the stream"))
                    }
                }
            },
        )
        .await;
        let leader = cluster.stream_leader(&app.stream).await.unwrap();
        cluster.kill_node(leader);
        println!("killed the stream leader n{}", leader + 1);
        leader
    };
    let ((), killed) = tokio::join!(
        async {
            join_all(load).await;
        },
        kill
    );
    assert_eq!(
        app.event_count().await,
        (WRITERS * (UPDATES + 1)) as i64,
        "every command was committed"
    );

    assert_equals_log(&admin, &app.stream, &app.pool, Duration::from_secs(60)).await;
    cluster.start_node(killed).await.unwrap();
    assert_equals_log(&admin, &app.stream, &app.pool, Duration::from_secs(30)).await;
    projections::caught_up(&app.pool, Duration::from_secs(60)).await;
    projections::assert_live_equals_rebuilt(&app).await;
    running.stop().await;
    app.stop().await;
}
