//! Projections under faults and while being rebuilt (PROMISES P6): a projector SIGKILLed
//! mid-batch, again and again, NATS killed and restarted under a projection, and a
//! rebuild swapped in under live traffic, each ending with every live model equal to a
//! model rebuilt from the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use events::read_model::Projection;
use keel_tests::nats_server::NatsServer;
use keel_tests::principals::Principal;
use keel_tests::projections::{Running, assert_live_equals_rebuilt, caught_up, config, seed_blog};
use keel_tests::test_app::test_config;
use keel_tests::worker_process::WorkerProcess;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
use reqwest::Method;
use serde_json::json;

/// The lowest position any projection has applied.
async fn slowest(app: &TestApp) -> i64 {
    projectors::operations::status(&app.pool)
        .await
        .unwrap()
        .iter()
        .map(|s| s.position)
        .min()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_projector_killed_mid_batch_again_and_again_double_counts_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let appended = seed_blog(&app.pool, 50, 200, 6000).await.unwrap();
    let mut process = WorkerProcess::spawn("projectors", &app);
    let mut seen = 0;
    for kill in 0..6 {
        let before = seen;
        seen = eventually(
            Duration::from_secs(60),
            "the projector makes progress between kills",
            || async {
                let now = slowest(&app).await;
                if now > before {
                    Ok(now)
                } else {
                    Err(format!("kill {kill}: at {now}"))
                }
            },
        )
        .await;
        if seen >= appended as i64 {
            break;
        }
        process.kill();
        process = WorkerProcess::spawn("projectors", &app);
    }
    caught_up(&app.pool, Duration::from_secs(120)).await;
    process.kill();
    let likes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'post.liked'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let counted: i64 = sqlx::query_scalar("SELECT sum(like_count) FROM rm_posts.posts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(counted, likes, "likes counted once each");
    assert_live_equals_rebuilt(&app).await;
    app.stop().await;
}

/// Keeps writing: new authors, posts published, likes, renames.
async fn write_until(app: Arc<TestApp>, stop: Arc<AtomicBool>) -> usize {
    let mut commands = 0;
    while !stop.load(Ordering::Relaxed) {
        let (id, token) = app.register("Writer").await;
        let post = app.published_post(&token).await;
        let (_, fan) = app.register("Fan").await;
        let liked = app
            .request(Method::PUT, &format!("/api/posts/{post}/like"), &fan)
            .send()
            .await
            .unwrap();
        assert_eq!(liked.status(), 200);
        let renamed = app
            .send(
                Method::PATCH,
                &format!("/api/users/{id}"),
                &token,
                json!({"name": "Writer renamed"}),
            )
            .await;
        assert_eq!(renamed.status(), 200);
        commands += 6;
    }
    commands
}

#[tokio::test]
async fn a_rebuild_under_live_traffic_is_never_seen_half_built() {
    let app = Arc::new(TestApp::spawn().await.unwrap());
    seed_blog(&app.pool, 30, 300, 3000).await.unwrap();
    let projectors = Running::start(&app).await;
    let (ada, token) = app.register("Ada").await;
    let mut published = 0;
    for _ in 0..5 {
        app.published_post(&token).await;
        published += 1;
    }
    caught_up(&app.pool, Duration::from_secs(60)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_until(app.clone(), stop.clone()));
    let reader = {
        let (app, stop, token) = (app.clone(), stop.clone(), token.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let (_, author) = app.get(&format!("/api/authors/{ada}"), &token).await;
                assert_eq!(
                    author["post_count"], published,
                    "authors half built: {author}"
                );
                let (_, page) = app
                    .get(&format!("/api/posts?author_id={ada}"), &token)
                    .await;
                assert_eq!(
                    page["items"].as_array().map(Vec::len),
                    Some(published as usize),
                    "posts half built: {page}"
                );
                let (_, all) = app.get("/api/posts?limit=100", &token).await;
                assert_eq!(all["items"].as_array().map(Vec::len), Some(100), "{all}");
                reads += 1;
            }
            reads
        })
    };
    let (pool, cache) = projectors::open(&config(&app)).await.unwrap();
    for projection in Projection::ALL {
        projectors::rebuild::rebuild(&pool, projection, &cache)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let commands = writer.await.unwrap();
    let reads = reader.await.unwrap();
    assert!(
        commands > 0 && reads > 0,
        "{commands} commands, {reads} reads"
    );
    caught_up(&app.pool, Duration::from_secs(60)).await;
    projectors.stop().await;
    assert_live_equals_rebuilt(&app).await;
    Arc::into_inner(app).unwrap().stop().await;
}

#[tokio::test]
async fn projections_resume_after_nats_is_killed_and_restarted_mid_backlog() {
    let mut nats = NatsServer::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut settings = test_config(fresh_database().await.unwrap(), &jwks);
    settings.connections.nats_url = nats.url_for(Principal::CommandApi);
    let app = TestApp::spawn_with(settings, jwks).await.unwrap();
    let appended = seed_blog(&app.pool, 40, 200, 8000).await.unwrap() as i64;
    let projectors = Running::start(&app).await;
    eventually(Duration::from_secs(60), "the projections start", || async {
        let now = slowest(&app).await;
        if now > 0 {
            Ok(())
        } else {
            Err(format!("at {now}"))
        }
    })
    .await;
    nats.stop();
    let stranded = slowest(&app).await;
    // Commands keep working while NATS is away; their events wait in the log.
    let (_, token) = app.register("During the outage").await;
    app.published_post(&token).await;
    nats.start_again().await.unwrap();
    caught_up(&app.pool, Duration::from_secs(120)).await;
    assert!(
        stranded < appended,
        "NATS was stopped after the backlog was applied"
    );
    projectors.stop().await;
    assert_live_equals_rebuilt(&app).await;
    app.stop().await;
}
