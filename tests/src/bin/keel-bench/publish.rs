//! `publish`: the outbox publisher draining a pre-filled log into JetStream, beside a bare
//! async-nats publisher sending the same messages with the same in-flight window; then
//! the delay from a command's 2xx to its event reaching a subscriber of the stream's
//! subjects, at a steady command rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use keel_tests::principals::{Principal, nats_connect, principals};
use keel_tests::test_app::test_config;
use keel_tests::{
    JwksServer, TestApp, fresh_database, prefill, unique_name, unique_subject_prefix,
};
use publisher::message::Message;
use publisher::outbox_publisher::WINDOW;
use publisher::{EventStream, Progress, Publisher};
use reqwest::Method;
use tokio_util::sync::CancellationToken;

use crate::percentile;
use crate::report::Figure;

/// Keel's NATS, as `principal`.
async fn nats(principal: Principal) -> anyhow::Result<async_nats::Client> {
    Ok(nats_connect(&principals().nats_url(principal)).await?)
}

/// Events/s of Keel's publisher draining `events` pre-filled events into Keel's NATS.
async fn drain_rate(events: usize) -> anyhow::Result<(f64, String, EventStream)> {
    drain_rate_on(events, &principals().nats_url(Principal::CommandApi), 1).await
}

/// Events/s of Keel's publisher draining `events` pre-filled events into a stream of
/// `replicas` on the NATS of `nats_url`.
pub async fn drain_rate_on(
    events: usize,
    nats_url: &str,
    replicas: usize,
) -> anyhow::Result<(f64, String, EventStream)> {
    let database_url = fresh_database().await?;
    let pool = events::database::open(&database_url, None, 8).await?;
    prefill(&pool, events).await?;
    let context = jetstream::new(nats_connect(nats_url).await?);
    let stream = EventStream {
        name: unique_name("BENCH"),
        subject_prefix: unique_subject_prefix(),
        replicas,
        partitions: events::partitions::Partitions::ONE,
    };
    let progress = Arc::new(Progress::default());
    let publisher = Publisher {
        pool,
        database_url: database_url.clone(),
        jetstream: context,
        stream: stream.clone(),
        progress: progress.clone(),
    };
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(publisher.run(stop.clone()));
    while progress.published() < events as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    running.await?;
    Ok((rate, database_url, stream))
}

/// Events/s of a bare publisher: the same messages, built beforehand, the same window.
async fn bare_rate(database_url: &str, source: &EventStream) -> anyhow::Result<f64> {
    let pool = sqlx::PgPool::connect(database_url).await?;
    let events = events::event_log::read_all(&pool, domain::ids::Position(0), i64::MAX).await?;
    let stream = EventStream {
        name: unique_name("BENCH_BARE"),
        subject_prefix: unique_subject_prefix(),
        replicas: 1,
        partitions: events::partitions::Partitions::ONE,
    };
    let context = jetstream::new(nats(Principal::CommandApi).await?);
    stream.ensure(&context).await?;
    let messages: Vec<Message> = events
        .iter()
        .map(|e| Message::new(&stream, e, None))
        .collect();
    let started = Instant::now();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut acks = Vec::with_capacity(WINDOW as usize);
        for message in messages.by_ref().take(WINDOW as usize) {
            acks.push(
                context
                    .publish_with_headers(message.subject, message.headers, message.payload)
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    let rate = events.len() as f64 / started.elapsed().as_secs_f64();
    for name in [&stream.name, &source.name] {
        let _ = context.delete_stream(name).await;
    }
    Ok(rate)
}

/// Delay from each command's 2xx to its event reaching a core subscriber of the stream's
/// subjects, at `rate` commands/s for `seconds`.
async fn latency(rate: u32, seconds: u64) -> anyhow::Result<Vec<Duration>> {
    let jwks = JwksServer::start().await?;
    let config = test_config(fresh_database().await?, &jwks);
    let prefix = config.connections.subject_prefix.clone();
    let app = Arc::new(TestApp::spawn_with(config, jwks).await?);
    let client = nats(Principal::Admin).await?;
    let mut subscriber = client.subscribe(format!("{prefix}.>")).await?;
    let seen: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let arrivals = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if let Some(id) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
                    if let Ok(mut seen) = seen.lock() {
                        seen.insert(id.as_str().to_owned(), Instant::now());
                    }
                }
            }
        })
    };
    let users: Vec<(uuid::Uuid, String)> = {
        let mut users = Vec::new();
        for i in 0..32 {
            users.push(app.register(&format!("Bench {i}")).await);
        }
        users
    };
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    let total = rate as u64 * seconds;
    let mut sent = Vec::with_capacity(total as usize);
    for n in 0..total {
        ticker.tick().await;
        let (id, token) = users[n as usize % users.len()].clone();
        let app = app.clone();
        sent.push(tokio::spawn(async move {
            let response = app
                .send(
                    Method::PATCH,
                    &format!("/api/users/{id}"),
                    &token,
                    serde_json::json!({"name": format!("N{n}")}),
                )
                .await;
            let acknowledged = Instant::now();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            body["events"][0]["id"]
                .as_str()
                .map(|id| (id.to_owned(), acknowledged))
        }));
    }
    let mut acknowledged = Vec::new();
    for task in sent {
        if let Some(pair) = task.await? {
            acknowledged.push(pair);
        }
    }
    // Give the last events time to arrive (a benchmark, not a test: nothing is asserted).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && seen.lock().map_or(0, |s| s.len()) < acknowledged.len() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    arrivals.abort();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut delays: Vec<Duration> = acknowledged
        .iter()
        .filter_map(|(id, at)| {
            seen.get(id)
                .map(|arrived| arrived.saturating_duration_since(*at))
        })
        .collect();
    delays.sort();
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
    Ok(delays)
}

pub async fn run(events: usize, rate: u32, seconds: u64) -> anyhow::Result<Vec<Figure>> {
    let (keel, database_url, source) = drain_rate(events).await?;
    let bare = bare_rate(&database_url, &source).await?;
    println!("scenario  events   keel events/s  bare async-nats events/s  ratio  goal");
    println!(
        "publish   {events:>6}  {keel:>14.0}  {bare:>24.0}  {:>5.2}  0.80",
        keel / bare
    );
    let delays = latency(rate, seconds).await?;
    println!("scenario       commands/s  measured  2xx -> on the bus p50 ms  p99 ms  goal p99");
    println!(
        "commit-to-bus  {rate:>10}  {:>8}  {:>24.2}  {:>6.2}  20 ms",
        delays.len(),
        percentile(&delays, 0.50).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
    );
    Ok(vec![
        Figure::ratio(
            "publish",
            keel,
            "events/s",
            "bare async-nats JetStream publish",
            bare,
            Some(0.8),
        ),
        Figure::absolute(
            "commit-to-bus p99",
            percentile(&delays, 0.99).as_secs_f64() * 1e3,
            "ms",
            Some("< 20 ms"),
        ),
    ])
}
