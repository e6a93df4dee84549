//! `project`: the `posts` and `authors` projections applying a JetStream backlog, beside
//! a bare durable pull consumer that only fetches and acks the same messages; then
//! `rebuild`: the `posts` model rebuilt from the Postgres log, beside a bare keyset
//! `SELECT` scan of the same log read into the same rows.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use events::read_model::Projection;
use futures::StreamExt;
use keel_tests::projections::{Running, config, seed_blog};
use keel_tests::stream::count;
use keel_tests::{TestApp, fresh_database};

use crate::report::Figure;

/// A blog history of about `events` events: one user per 100, one post per 10.
async fn seed(pool: &sqlx::PgPool, events: usize) -> anyhow::Result<usize> {
    let users = (events / 100).max(2);
    let posts = (events / 10).max(1);
    let reactions = events.saturating_sub(users + 2 * posts);
    seed_blog(pool, users, posts, reactions).await
}

/// Seeds about `events` events into `app`'s log and waits until its publisher has put them
/// all in the stream: a backlog for the projectors. Returns how many were seeded.
pub async fn backlog(app: &TestApp, events: usize) -> anyhow::Result<usize> {
    let seeded = seed(&app.pool, events).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while count(&app.nats_url, &app.stream).await? < seeded as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the backlog never reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(seeded)
}

/// Waits until the `posts` and `authors` projections have applied `app`'s whole log.
pub async fn applied(app: &TestApp) -> anyhow::Result<()> {
    let head = events::event_log::head(&app.pool).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let posts = events::read_model::checkpoint(&app.pool, Projection::Posts).await?;
        let authors = events::read_model::checkpoint(&app.pool, Projection::Authors).await?;
        if posts >= head && authors >= head {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the projections never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events/s that the `posts` and `authors` projections (running together, as in
/// production) apply from a backlog already in JetStream, and the bare consume rate.
async fn live(events: usize) -> anyhow::Result<(usize, f64, f64)> {
    let app = TestApp::spawn().await?;
    let seeded = backlog(&app, events).await?;
    let started = Instant::now();
    let projectors =
        Running::start_with(config(&app), &[Projection::Posts, Projection::Authors]).await;
    applied(&app).await?;
    let keel = seeded as f64 / started.elapsed().as_secs_f64();
    projectors.stop().await;
    let bare = bare_consume(&app, seeded).await?;
    app.stop().await;
    Ok((seeded, keel, bare))
}

/// A durable pull consumer that fetches and acks every message, doing nothing else.
async fn bare_consume(app: &TestApp, messages: usize) -> anyhow::Result<f64> {
    let context =
        jetstream::new(keel_tests::principals::nats_connect(&app.nats_admin_url()).await?);
    let stream = context.get_stream(&app.stream).await?;
    let consumer = stream
        .get_or_create_consumer(
            "bench-bare",
            consumer::pull::Config {
                durable_name: Some("bench-bare".to_owned()),
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 2000,
                ..Default::default()
            },
        )
        .await?;
    let started = Instant::now();
    let mut received = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await?
        .take(messages);
    while let Some(message) = received.next().await {
        message?.ack().await.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// Events/s of `projectors rebuild posts` over a log of about `events` events, and of a
/// bare keyset scan of the same log into the same rows.
async fn rebuild(events: usize) -> anyhow::Result<(usize, f64, f64)> {
    let database_url = fresh_database().await?;
    let pool = events::database::open(&database_url, None, 4).await?;
    let seeded = seed(&pool, events).await?;
    let started = Instant::now();
    let mut after = domain::ids::Position(0);
    loop {
        let page = events::event_log::read_all(&pool, after, projectors::rebuild::PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
    }
    let scan = seeded as f64 / started.elapsed().as_secs_f64();
    let settings = projectors::Config {
        connections: events::settings::Settings {
            database_url: database_url.clone(),
            ..settings_for_rebuild()
        },
    };
    let (pool, cache) = projectors::open(&settings).await?;
    let started = Instant::now();
    projectors::rebuild::rebuild(&pool, Projection::Posts, &cache).await?;
    let keel = seeded as f64 / started.elapsed().as_secs_f64();
    Ok((seeded, keel, scan))
}

fn settings_for_rebuild() -> events::settings::Settings {
    events::settings::Settings {
        database_url: String::new(),
        migrate_database_url: None,
        nats_url: String::new(),
        nats_creds: None,
        redis_url: keel_tests::principals::principals()
            .redis_url(keel_tests::principals::Principal::Projectors),
        tls_ca_file: None,
        stream: keel_tests::unique_name("BENCH_REBUILD"),
        subject_prefix: String::new(),
        partitions: events::partitions::Partitions::ONE,
    }
}

pub async fn run(events: usize, rebuild_events: usize) -> anyhow::Result<Vec<Figure>> {
    let (backlog, live_keel, bare) = live(events).await?;
    println!("scenario  events   keel events/s  bare pull-consume events/s  ratio");
    println!(
        "project   {backlog:>7}  {live_keel:>13.0}  {bare:>26.0}  {:>5.2}",
        live_keel / bare
    );
    let (log, keel, scan) = rebuild(rebuild_events).await?;
    println!("scenario  events   keel events/s  bare keyset scan events/s  ratio  goal");
    println!(
        "rebuild   {log:>7}  {keel:>13.0}  {scan:>25.0}  {:>5.2}  0.50",
        keel / scan
    );
    Ok(vec![
        Figure::ratio(
            "project",
            live_keel,
            "events/s",
            "bare JetStream pull consume + ack",
            bare,
            None,
        ),
        Figure::ratio(
            "rebuild",
            keel,
            "events/s",
            "bare keyset SELECT scan of the log",
            scan,
            Some(0.5),
        ),
    ])
}
