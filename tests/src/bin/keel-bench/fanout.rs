//! `fanout`: many WebSocket clients, each its own user, on one command API; notifications
//! published at a steady rate to random users through the relay's own script, each
//! carrying its send time. Beside it, in the same run: `redis-benchmark`'s bare PUBLISH
//! rate and the script's own rate with no socket open.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use domain::ids::Position;
use futures::{StreamExt, TryStreamExt};
use keel_tests::notifications::Notifier;
use keel_tests::principals::{Principal, principals};
use keel_tests::test_app::{mint, test_config};
use keel_tests::{JwksServer, TestApp, fresh_database, unique_name};
use notify::Publisher as NotificationPublisher;
use rand::{Rng, SeedableRng};
use redis::aio::ConnectionManager;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::percentile;
use crate::report::Figure;

/// The sizes of one run.
pub struct Options {
    pub sockets: usize,
    /// Notifications per second, all publishers together.
    pub rate: u32,
    pub seconds: u64,
    /// Concurrent publisher tasks, each with its own Redis connection.
    pub publishers: usize,
    /// Sockets being opened at once.
    pub connect_concurrency: usize,
    /// Also subscribe to `notify.user.*` in the bench, to time Redis's part alone.
    pub probe: bool,
    /// Set `TCP_QUICKACK` on every client socket after every read (a diagnostic: see
    /// BENCHMARKS.md, "End to end").
    pub quickack: bool,
}

/// A client socket on `/ws/notifications`.
pub type Ws = WebSocketStream<TcpStream>;

/// Opens `/ws/notifications` with `Authorization: Bearer`. (The test kit's `Socket` fails
/// its test on a close frame or a quiet minute; a benchmark counts those instead.)
pub async fn open_socket(base_url: &str, token: &str) -> anyhow::Result<Ws> {
    let address = base_url.trim_start_matches("http://");
    let mut request = format!("ws://{address}/ws/notifications").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    // Frames are a few hundred bytes: a small read buffer keeps thousands of clients cheap.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .context("the WebSocket upgrade")?;
    Ok(ws)
}

/// Nanoseconds since the UNIX epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Deserialize)]
struct Frame {
    data: Stamp,
}

#[derive(Deserialize)]
struct Stamp {
    sent_ns: u64,
}

fn stamp_of(text: &str) -> Option<u64> {
    serde_json::from_str::<Frame>(text)
        .ok()
        .map(|f| f.data.sent_ns)
}

/// Counters every client updates.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    last_received_ns: AtomicU64,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    /// The close code, if the server closed the socket before the end (0: no close frame).
    closed: Option<u16>,
}

/// Reads frames until `stop`, timing each from the send stamp in its data.
async fn read_frames(
    mut ws: Ws,
    tally: Arc<Tally>,
    stop: CancellationToken,
    quickack: bool,
) -> Seen {
    let mut seen = Seen::default();
    loop {
        if quickack {
            let _ = ws.get_ref().set_quickack(true);
        }
        let message = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                let now = now_ns();
                if let Some(sent) = stamp_of(&text) {
                    seen.latencies
                        .push(Duration::from_nanos(now.saturating_sub(sent)));
                    tally.received.fetch_add(1, Ordering::Relaxed);
                    tally.last_received_ns.fetch_max(now, Ordering::Relaxed);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                seen.closed = Some(frame.map_or(0, |f| u16::from(f.code)));
                break;
            }
            // Pings are answered by tungstenite on the next read.
            Some(Ok(_)) => {}
            None | Some(Err(_)) => {
                seen.closed = Some(0);
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    seen
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// `host` and `port` of a `redis://` URL, for `redis-benchmark`.
fn redis_host_port(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("redis://");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("127.0.0.1:6379");
    match authority.rsplit_once(':') {
        Some((host, port)) => (host.to_owned(), port.to_owned()),
        None => (authority.to_owned(), "6379".to_owned()),
    }
}

/// Requests/s of `redis-benchmark -q -n 200000 -P 1 PUBLISH bench.chan hello` (50
/// clients, its default).
fn redis_benchmark_publish(redis_url: &str) -> anyhow::Result<f64> {
    let (host, port) = redis_host_port(redis_url);
    let output = Command::new("redis-benchmark")
        .args(["-h", &host, "-p", &port, "-q", "-n", "200000", "-P", "1"])
        .args(["PUBLISH", "bench.chan", "hello"])
        .output()
        .context("running redis-benchmark (apt install redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split(['\r', '\n'])
        .filter_map(|line| {
            line.split_once(": ")?
                .1
                .split(" requests per second")
                .next()
        })
        .filter_map(|n| n.trim().parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("no rate in redis-benchmark's output: {text}"))
}

/// Publishes like the relay: its script, its connection type, fresh positions.
#[derive(Clone)]
struct Publishing {
    publisher: NotificationPublisher,
    users: Arc<Vec<Uuid>>,
    next_position: Arc<AtomicU64>,
}

impl Publishing {
    /// One notification to a random user, stamped now; the script's round trip, or `None`
    /// if the script dropped it as a duplicate.
    async fn one(
        &self,
        redis: &mut ConnectionManager,
        user: Uuid,
    ) -> anyhow::Result<Option<Duration>> {
        let position = self.next_position.fetch_add(1, Ordering::Relaxed) as i64;
        let sent_ns = now_ns();
        let addressed =
            Notifier::notification(user, serde_json::json!({"sent_ns": sent_ns, "n": position}));
        let started = Instant::now();
        let offset = self
            .publisher
            .publish(redis, &addressed, Position(position))
            .await
            .context("the relay's publish script")?;
        Ok(offset.map(|_| started.elapsed()))
    }

    /// `count` notifications to random users at `rate`/s (as fast as the connection allows
    /// when `rate` is `None`): what was due each millisecond goes out together, pipelined
    /// on one connection.
    async fn run(
        self,
        redis: ConnectionManager,
        count: u64,
        rate: Option<f64>,
        seed: u64,
    ) -> Published {
        const UNTHROTTLED_WINDOW: u64 = 64;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut published = Published::default();
        published.round_trips.reserve(count as usize);
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        let mut sent = 0u64;
        while sent < count {
            let due = match rate {
                Some(rate) => {
                    ticker.tick().await;
                    ((started.elapsed().as_secs_f64() * rate) as u64).min(count)
                }
                None => (sent + UNTHROTTLED_WINDOW).min(count),
            };
            let batch = (sent..due).map(|_| {
                let user = self.users[rng.gen_range(0..self.users.len())];
                let mut redis = redis.clone();
                let publishing = self.clone();
                async move { publishing.one(&mut redis, user).await }
            });
            for outcome in futures::future::join_all(batch).await {
                match outcome {
                    Ok(Some(round_trip)) => published.round_trips.push(round_trip),
                    Ok(None) => published.duplicates += 1,
                    Err(error) => {
                        published.errors += 1;
                        published.first_error.get_or_insert(format!("{error:#}"));
                    }
                }
            }
            sent = due;
        }
        published
    }
}

/// What publishers did.
#[derive(Default)]
struct Published {
    /// The script's round trip of each notification it published, sorted once merged.
    round_trips: Vec<Duration>,
    /// Dropped by the script as already published (none expected: ids are fresh).
    duplicates: u64,
    /// Failed calls (e.g. no answer within the response timeout): maybe published.
    errors: u64,
    first_error: Option<String>,
    /// From the first publish to the last answer, all publishers together.
    seconds: f64,
}

/// How long a publisher waits for the script's answer. (The relay waits 2 s, then
/// retries; here a late answer is measured rather than retried.)
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `publishers` tasks sharing `total` notifications at `rate`/s (unthrottled when
/// `None`).
async fn publish_all(
    redis_url: &str,
    publishing: &Publishing,
    publishers: usize,
    total: u64,
    rate: Option<f64>,
) -> anyhow::Result<Published> {
    let client = redis::Client::open(redis_url)?;
    let config =
        redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut connections = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        connections.push(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, redis)| {
            let share =
                total / publishers as u64 + u64::from((i as u64) < total % publishers as u64);
            let rate = rate.map(|r| r * share as f64 / total as f64);
            tokio::spawn(publishing.clone().run(redis, share, rate, i as u64))
        })
        .collect();
    let mut all = Published::default();
    for task in tasks {
        let published = task.await?;
        all.round_trips.extend(published.round_trips);
        all.duplicates += published.duplicates;
        all.errors += published.errors;
        all.first_error = all.first_error.or(published.first_error);
    }
    all.seconds = started.elapsed().as_secs_f64();
    all.round_trips.sort();
    Ok(all)
}

/// Deletes the notification keys (histories, seen ids, epoch) of `stream`.
async fn delete_keys(redis_url: &str, stream: &str) -> anyhow::Result<()> {
    let mut redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    projectors::ui_cache::delete_matching(&mut redis, &format!("keel:{stream}:notify:*")).await?;
    Ok(())
}

/// A core Redis subscriber of `notify.user.*` in the bench: send stamp → Redis delivered.
fn probe(
    redis_url: &str,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Vec<Duration>>>> {
    let client = redis::Client::open(redis_url)?;
    Ok(tokio::spawn(async move {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.psubscribe(notify::CHANNEL_PATTERN).await?;
        let mut messages = pubsub.on_message();
        let mut latencies = Vec::new();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => break,
                message = messages.next() => message,
            };
            let Some(message) = message else { break };
            let now = now_ns();
            if let Some(sent) = std::str::from_utf8(message.get_payload_bytes())
                .ok()
                .and_then(stamp_of)
            {
                latencies.push(Duration::from_nanos(now.saturating_sub(sent)));
            }
        }
        latencies.sort();
        Ok(latencies)
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Figure>> {
    let Options {
        sockets,
        rate,
        seconds,
        publishers,
        connect_concurrency,
        probe: with_probe,
        quickack,
    } = options;
    anyhow::ensure!(
        sockets > 0 && rate > 0 && seconds > 0 && publishers > 0 && connect_concurrency > 0,
        "sizes must be positive"
    );
    // Each socket is two descriptors here (client and server end), plus the rest.
    let needed = 2 * sockets as u64 + 512;
    if let Some(limit) = open_files_limit() {
        anyhow::ensure!(
            limit >= needed,
            "fanout with {sockets} sockets needs about {needed} open files, but the limit is \
             {limit}: raise it (`ulimit -n {needed}`; scripts/bench raises the soft limit to \
             the hard one) or lower --sockets"
        );
    }
    // The bench's own measurements as the admin; notifications published as the relay.
    let redis_url = principals().redis_url(Principal::Admin);
    let relay_url = principals().redis_url(Principal::Relay);
    let total = u64::from(rate) * seconds;

    // The machine's own limits first, with nothing else of ours running.
    let bare_publish = redis_benchmark_publish(&redis_url)?;
    let alone_stream = unique_name("FANOUT_ALONE");
    let alone = Publishing {
        publisher: NotificationPublisher::new(&alone_stream),
        users: Arc::new((0..sockets).map(|_| Uuid::new_v4()).collect()),
        next_position: Arc::new(AtomicU64::new(1)),
    };
    let cpu = crate::cpu::sample(&redis_url).await;
    let alone_run = publish_all(&relay_url, &alone, publishers, total.min(50_000), None).await?;
    let alone_count = alone_run.round_trips.len();
    let alone_cpu = cpu.report(&redis_url, "the script alone").await;
    let script_alone = alone_count as f64 / alone_run.seconds;
    delete_keys(&redis_url, &alone_stream).await?;

    let jwks = JwksServer::start().await?;
    let app = TestApp::spawn_with(test_config(fresh_database().await?, &jwks), jwks).await?;
    let users: Vec<Uuid> = (0..sockets).map(|_| Uuid::new_v4()).collect();
    let tokens: Vec<String> = users
        .iter()
        .map(|user| {
            mint(dev_issuer::TokenRequest {
                sub: user.to_string(),
                roles: vec!["user".into()],
                // Cheaper to sign than RS256; the server verifies either.
                alg: dev_issuer::Alg::Es256,
                ..Default::default()
            })
        })
        .collect();

    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let connecting = Instant::now();
    let readers: Vec<_> = futures::stream::iter(tokens)
        .map(|token| {
            let base_url = app.base_url.clone();
            async move { open_socket(&base_url, &token).await }
        })
        .buffer_unordered(connect_concurrency)
        .map_ok(|ws| tokio::spawn(read_frames(ws, tally.clone(), stop.clone(), quickack)))
        .try_collect()
        .await
        .context("opening the sockets")?;
    let connect_seconds = connecting.elapsed().as_secs_f64();
    // Let every session register with the hub (a notification that comes sooner is not
    // lost, but reaches its socket later, through the history).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let probe_stop = CancellationToken::new();
    let probe_task = with_probe
        .then(|| probe(&redis_url, probe_stop.clone()))
        .transpose()?;
    let publishing = Publishing {
        publisher: NotificationPublisher::new(&app.stream),
        users: Arc::new(users),
        next_position: Arc::new(AtomicU64::new(1)),
    };
    let cpu = crate::cpu::sample(&redis_url).await;
    let first_send_ns = now_ns();
    let steady = publish_all(
        &relay_url,
        &publishing,
        publishers,
        total,
        Some(f64::from(rate)),
    )
    .await?;
    let published = steady.round_trips.len() as u64;
    let round_trips = &steady.round_trips;
    let fanout_cpu = cpu.report(&redis_url, "the steady publishing").await;
    // Let the last frames arrive: until all are in, or nothing more came for 2 s.
    let mut last = (tally.received.load(Ordering::Relaxed), Instant::now());
    while last.0 < published && last.1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let received = tally.received.load(Ordering::Relaxed);
        if received != last.0 {
            last = (received, Instant::now());
        }
    }
    stop.cancel();
    probe_stop.cancel();
    let mut latencies = Vec::with_capacity(published as usize);
    let (mut evicted, mut closed_otherwise) = (0usize, 0usize);
    for reader in readers {
        let seen = reader.await?;
        latencies.extend(seen.latencies);
        match seen.closed {
            Some(1013) => evicted += 1,
            Some(_) => closed_otherwise += 1,
            None => {}
        }
    }
    latencies.sort();
    let probed = match probe_task {
        Some(task) => Some(task.await??),
        None => None,
    };
    let delivered = latencies.len() as u64;
    let last_ns = tally.last_received_ns.load(Ordering::Relaxed);
    let delivered_per_second =
        delivered as f64 / (last_ns.saturating_sub(first_send_ns) as f64 / 1e9).max(1e-9);
    let sent_per_second = published as f64 / steady.seconds;

    println!(
        "fanout: {sockets} sockets (opened in {connect_seconds:.1} s, {connect_concurrency} at a time), \
         {rate}/s asked for {seconds} s, {publishers} publisher connections"
    );
    println!(
        "published  sent/s  delivered  lost  evicted  other closes  delivered/s  p50 ms  p99 ms  max ms  goal p99"
    );
    println!(
        "{published:>9}  {sent_per_second:>6.0}  {delivered:>9}  {:>4}  {evicted:>7}  {closed_otherwise:>12}  {delivered_per_second:>11.0}  {:>6.2}  {:>6.2}  {:>6.2}  50 ms",
        published.saturating_sub(delivered),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    if steady.errors + steady.duplicates > 0 {
        println!(
            "publish calls failed: {} (first: {}), dropped as duplicates: {}",
            steady.errors,
            steady.first_error.as_deref().unwrap_or("-"),
            steady.duplicates
        );
    }
    println!(
        "publish script round trip at {rate}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(round_trips, 0.50)),
        ms(percentile(round_trips, 0.99)),
        ms(round_trips.last().copied().unwrap_or_default()),
    );
    if let Some(probed) = probed {
        println!(
            "send -> a bare Redis pattern subscriber in the bench: {} seen, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            probed.len(),
            ms(percentile(&probed, 0.50)),
            ms(percentile(&probed, 0.99)),
            ms(probed.last().copied().unwrap_or_default()),
        );
    }
    println!("baseline, same run                                   per s  delivered/s ÷ it");
    println!(
        "redis-benchmark -q -n 200000 -P 1 PUBLISH (50 conns)  {bare_publish:>6.0}  {:>16.3}",
        delivered_per_second / bare_publish
    );
    println!(
        "relay script alone, no sockets ({publishers} conns, {alone_count:>6})  {script_alone:>6.0}  {:>16.3}   (÷ bare PUBLISH: {:.2})",
        delivered_per_second / script_alone,
        script_alone / bare_publish
    );

    println!("{fanout_cpu}");
    println!("{alone_cpu}");

    delete_keys(&redis_url, &app.stream).await?;
    app.stop().await;
    Ok(vec![
        Figure::ratio(
            "fanout",
            delivered_per_second,
            "delivered/s",
            "redis-benchmark PUBLISH (rate is asked)",
            bare_publish,
            None,
        ),
        Figure::absolute(
            "fanout p99",
            ms(percentile(&latencies, 0.99)),
            "ms",
            Some("< 50 ms"),
        ),
    ])
}
