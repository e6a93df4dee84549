//! `e2e`: from a command accepted to its notification on a WebSocket. One author with a
//! published post keeps a socket open; commenters post comments at a steady total rate
//! through the real command API; the outbox publisher puts each event on JetStream, the
//! relay turns it into a notification on Redis, and the hub sends it to the author's
//! socket. Frames are matched to comments by `comment_id`. Two probes in the bench (a
//! core NATS subscriber of the stream's subjects and a Redis subscriber of the author's
//! channel) split the time into its stages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use keel_tests::TestApp;
use keel_tests::notifications::RunningRelay;
use reqwest::Method;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::fanout::{Ws, open_socket};
use crate::percentile;
use crate::report::Figure;

/// The sizes of one run.
pub struct Options {
    /// Comments per second, all commenters together.
    pub rate: u32,
    pub seconds: u64,
    pub commenters: usize,
    /// Set `TCP_QUICKACK` on the author's socket after every read, so the client never
    /// delays its ACKs (a diagnostic: see BENCHMARKS.md, "End to end").
    pub quickack: bool,
}

/// When something named by a key (comment id or event id) arrived, as seen by a probe.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn record(arrivals: &Arrivals, key: String) {
    let now = Instant::now();
    if let Ok(mut arrivals) = arrivals.lock() {
        arrivals.entry(key).or_insert(now);
    }
}

fn comment_id_of(json: &str) -> Option<String> {
    let value: Value = serde_json::from_str(json).ok()?;
    value["data"]["comment_id"].as_str().map(str::to_owned)
}

/// The author's socket: each frame's arrival by the comment it tells of.
fn read_socket(
    mut ws: Ws,
    arrivals: Arrivals,
    stop: CancellationToken,
    quickack: bool,
) -> tokio::task::JoinHandle<Option<u16>> {
    tokio::spawn(async move {
        loop {
            if quickack {
                let _ = ws.get_ref().set_quickack(true);
            }
            let message = tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                message = ws.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(id) = comment_id_of(&text) {
                        record(&arrivals, id);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(frame.map_or(0, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return Some(0),
            }
        }
    })
}

/// A core NATS subscriber of the stream's subjects: each event's arrival by its id.
async fn probe_bus(
    app: &TestApp,
    arrivals: Arrivals,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = keel_tests::principals::nats_connect(&app.nats_admin_url()).await?;
    let mut subscriber = client
        .subscribe(format!("{}.>", app.subject_prefix))
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if let Some(id) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
                record(&arrivals, id.as_str().to_owned());
            }
        }
    }))
}

/// A Redis subscriber of the author's channel: each notification's arrival by comment.
async fn probe_redis(
    app: &TestApp,
    author: uuid::Uuid,
    arrivals: Arrivals,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let client = redis::Client::open(app.redis_admin_url())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub
        .subscribe(notify::channel(domain::ids::UserId(author)))
        .await?;
    Ok(tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if let Some(id) = std::str::from_utf8(message.get_payload_bytes())
                .ok()
                .and_then(comment_id_of)
            {
                record(&arrivals, id);
            }
        }
    }))
}

/// One accepted comment.
struct Accepted {
    comment_id: String,
    event_id: String,
    sent: Instant,
    acknowledged: Instant,
}

async fn comment(app: &TestApp, post: uuid::Uuid, token: &str, n: u64) -> anyhow::Result<Accepted> {
    let sent = Instant::now();
    let response = app
        .request(Method::POST, &format!("/api/posts/{post}/comments"), token)
        .json(&serde_json::json!({"body": format!("Bench comment {n}")}))
        .send()
        .await?;
    let acknowledged = Instant::now();
    anyhow::ensure!(
        response.status() == 201,
        "comment refused: {}",
        response.status()
    );
    let body: Value = response.json().await?;
    Ok(Accepted {
        comment_id: body["comment_id"]
            .as_str()
            .context("no comment_id")?
            .to_owned(),
        event_id: body["events"][0]["id"]
            .as_str()
            .context("no event id")?
            .to_owned(),
        sent,
        acknowledged,
    })
}

/// Milliseconds from `from` to `to`, negative when `to` came first.
fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        to.duration_since(from).as_secs_f64() * 1e3
    } else {
        -(from.duration_since(to).as_secs_f64() * 1e3)
    }
}

fn percentile_ms(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Waits until `arrivals` holds `want` entries, or nothing new came for `quiet`.
async fn settle(arrivals: &Arrivals, want: usize, quiet: Duration) {
    let count = || arrivals.lock().map_or(0, |a| a.len());
    let mut last = (count(), Instant::now());
    while last.0 < want && last.1.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = count();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Figure>> {
    let Options {
        rate,
        seconds,
        commenters,
        quickack,
    } = options;
    anyhow::ensure!(
        rate > 0 && seconds > 0 && commenters > 0,
        "sizes must be positive"
    );
    let app = Arc::new(TestApp::spawn().await?);
    let relay = RunningRelay::start(&app).await;
    let (author, author_token) = app.register("Ada Author").await;
    let post = app.published_post(&author_token).await;
    let mut tokens = Vec::with_capacity(commenters);
    for i in 0..commenters {
        tokens.push(app.register(&format!("Bench Commenter {i}")).await.1);
    }

    let frames: Arrivals = Arc::default();
    let on_bus: Arrivals = Arc::default();
    let on_redis: Arrivals = Arc::default();
    let stop = CancellationToken::new();
    let socket = read_socket(
        open_socket(&app.base_url, &author_token).await?,
        frames.clone(),
        stop.clone(),
        quickack,
    );
    let bus_probe = probe_bus(&app, on_bus.clone()).await?;
    let redis_probe = probe_redis(&app, author, on_redis.clone()).await?;
    // Warm up (and prove the socket live): one comment, through to its frame.
    let warm_up = comment(&app, post, &tokens[0], 0).await?;
    settle(&frames, 1, Duration::from_secs(10)).await;
    anyhow::ensure!(
        frames
            .lock()
            .is_ok_and(|f| f.contains_key(&warm_up.comment_id)),
        "the warm-up comment's notification never reached the author's socket"
    );

    let total = u64::from(rate) * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    let cpu = crate::cpu::sample(&app.redis_admin_url()).await;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 1..=total {
        ticker.tick().await;
        let app = app.clone();
        let token = tokens[n as usize % tokens.len()].clone();
        tasks.push(tokio::spawn(
            async move { comment(&app, post, &token, n).await },
        ));
    }
    let driven_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.report(&app.redis_admin_url(), "the commenting").await;
    let mut accepted = Vec::with_capacity(tasks.len());
    let mut refused = 0usize;
    for task in tasks {
        match task.await? {
            Ok(a) => accepted.push(a),
            Err(error) => {
                refused += 1;
                if refused == 1 {
                    eprintln!("first refused comment: {error:#}");
                }
            }
        }
    }
    settle(&frames, accepted.len() + 1, Duration::from_secs(5)).await;
    stop.cancel();
    let closed = socket.await?;
    bus_probe.abort();
    redis_probe.abort();
    relay.stop().await;

    let frames = frames.lock().map(|f| f.clone()).unwrap_or_default();
    let on_bus = on_bus.lock().map(|f| f.clone()).unwrap_or_default();
    let on_redis = on_redis.lock().map(|f| f.clone()).unwrap_or_default();
    let mut from_ack = Vec::with_capacity(accepted.len());
    let mut from_sent = Vec::with_capacity(accepted.len());
    let mut command = Vec::with_capacity(accepted.len());
    let (mut to_bus, mut to_redis, mut to_socket) = (Vec::new(), Vec::new(), Vec::new());
    for a in &accepted {
        command.push(a.acknowledged - a.sent);
        let Some(&frame) = frames.get(&a.comment_id) else {
            continue;
        };
        from_ack.push(frame.saturating_duration_since(a.acknowledged));
        from_sent.push(frame - a.sent);
        if let (Some(&bus), Some(&redis)) = (on_bus.get(&a.event_id), on_redis.get(&a.comment_id)) {
            to_bus.push(signed_ms(a.acknowledged, bus));
            to_redis.push(signed_ms(bus, redis));
            to_socket.push(signed_ms(redis, frame));
        }
    }
    for v in [&mut from_ack, &mut from_sent, &mut command] {
        v.sort();
    }
    for v in [&mut to_bus, &mut to_redis, &mut to_socket] {
        v.sort_by(f64::total_cmp);
    }

    println!(
        "e2e: {rate} comments/s asked for {seconds} s (driven at {:.0}/s), {commenters} commenters, one author socket",
        total as f64 / driven_seconds
    );
    println!(
        "accepted  refused  frames  missing  socket closed  201 -> frame p50 ms  p99 ms  max ms  sent -> frame p50 ms  p99 ms  max ms  goal p99"
    );
    println!(
        "{:>8}  {refused:>7}  {:>6}  {:>7}  {:>13}  {:>19.2}  {:>6.2}  {:>6.2}  {:>20.2}  {:>6.2}  {:>6.2}  100 ms",
        accepted.len(),
        from_ack.len(),
        accepted.len() - from_ack.len(),
        closed.map_or("no".to_owned(), |c| c.to_string()),
        ms(percentile(&from_ack, 0.50)),
        ms(percentile(&from_ack, 0.99)),
        ms(from_ack.last().copied().unwrap_or_default()),
        ms(percentile(&from_sent, 0.50)),
        ms(percentile(&from_sent, 0.99)),
        ms(from_sent.last().copied().unwrap_or_default()),
    );
    println!(
        "stage (ms; {} comments seen by both probes)              p50     p99     max",
        to_bus.len()
    );
    println!(
        "request sent -> 201 (the command)                   {:>7.2} {:>7.2} {:>7.2}",
        ms(percentile(&command, 0.50)),
        ms(percentile(&command, 0.99)),
        ms(command.last().copied().unwrap_or_default()),
    );
    let held = to_socket.iter().filter(|&&ms| ms > 10.0).count();
    for (stage, values) in [
        ("201 -> event on the bus (outbox publisher)", &to_bus),
        ("bus -> notification on Redis (relay)", &to_redis),
        ("Redis -> frame at the socket (hub)", &to_socket),
    ] {
        println!(
            "{stage:<50}  {:>7.2} {:>7.2} {:>7.2}",
            percentile_ms(values, 0.50),
            percentile_ms(values, 0.99),
            values.last().copied().unwrap_or_default(),
        );
    }

    println!("frames that took over 10 ms from Redis to the socket: {held}");
    println!("{cpu}");

    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
    Ok(vec![
        Figure::absolute("e2e p50", ms(percentile(&from_ack, 0.50)), "ms", None),
        Figure::absolute(
            "e2e p99",
            ms(percentile(&from_ack, 0.99)),
            "ms",
            Some("< 100 ms"),
        ),
    ])
}
