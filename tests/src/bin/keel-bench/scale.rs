//! `scale`: Keel spread over instances, on this one machine.
//!
//! - projectors: the `posts` and `authors` projections applying a backlog over P = 8
//!   partitions with one instance, then (on a fresh copy) with two, timed from the moment
//!   the partitions are shared: the log is seeded then, the publisher puts it on the
//!   stream and the projections apply it (seeding and publishing are in both times alike).
//!   A third run starts two instances together on a backlog already in the stream, so
//!   half the partitions move while it is applied (the cost of a rebalance under load).
//!   The instances run
//!   in this process, each with its own pools, connections and partition membership, as
//!   two processes would; on two cores a ratio near 1 is expected (the invariant is what
//!   the tests hold, not a speed-up), so the CPU use is printed beside it.
//! - hubs: three command-api instances on one stream, sockets spread evenly over them,
//!   notifications to random users of whom half have no socket anywhere: what each hub
//!   received (`keel_hub_notifications_received_total`) against what was addressed to
//!   its own users.
//! - replicas: the outbox drain into an R1 and an R3 stream of one three-node JetStream
//!   cluster on loopback.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use events::partitions::Partitions;
use events::read_model::Projection;
use futures::{StreamExt, TryStreamExt};
use keel_tests::nats_cluster::NatsCluster;
use keel_tests::notifications::Notifier;
use keel_tests::principals::{Principal, principals};
use keel_tests::projections::{Running, config, partition_owners};
use keel_tests::test_app::{mint, test_config};
use keel_tests::{JwksServer, TestApp, fresh_database, unique_name, unique_subject_prefix};
use rand::Rng;
use uuid::Uuid;

use crate::report::Figure;

/// The partitions of the projector runs.
const PARTITIONS: u32 = 8;
/// The hubs of the fan-out run.
const HUBS: usize = 3;

pub struct Options {
    /// Events in the backlog the projectors apply.
    pub events: usize,
    /// Sockets on each hub.
    pub sockets_per_hub: usize,
    /// Notifications published, to online and offline users alike.
    pub notifications: usize,
    /// Events drained into each of the R1 and R3 streams.
    pub drain_events: usize,
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Figure>> {
    let (one, one_cpu) = projectors(options.events, 1, Start::Settled).await?;
    let (two, two_cpu) = projectors(options.events, 2, Start::Settled).await?;
    let (moving, moving_cpu) = projectors(options.events, 2, Start::OnBacklog).await?;
    println!(
        "scale projectors: P = {PARTITIONS}, {} events (posts + authors): 1 instance {one:.0} events/s, \
         2 instances {two:.0} events/s (ratio {:.2}), 2 instances starting together on the backlog \
         {moving:.0} events/s (ratio {:.2})",
        options.events,
        two / one,
        moving / one
    );
    for line in [one_cpu, two_cpu, moving_cpu] {
        println!("  {line}");
    }
    let hubs = hubs(options.sockets_per_hub, options.notifications).await?;
    let (r1, r3) = replicas(options.drain_events).await?;
    println!(
        "scale replicas: outbox drain of {} events on a 3-node cluster: R1 {r1:.0} events/s, R3 {r3:.0} events/s, ratio {:.2}",
        options.drain_events,
        r3 / r1
    );
    Ok(vec![
        Figure::ratio(
            "scale: projectors, 2 instances (P = 8)",
            two,
            "events/s",
            "1 instance",
            one,
            None,
        ),
        Figure::ratio(
            "scale: projectors, 2 instances starting on a backlog",
            moving,
            "events/s",
            "1 instance",
            one,
            None,
        ),
        hubs,
        Figure::ratio(
            "scale: publish to R3 (3 nodes)",
            r3,
            "events/s",
            "R1 on the same cluster",
            r1,
            None,
        ),
    ])
}

/// How the projector instances meet the backlog.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// The partitions are shared before the backlog is seeded (the clock starts then).
    Settled,
    /// The backlog is in the stream first; the instances start on it together, so the
    /// partitions move while it is applied (the clock starts with the first instance).
    OnBacklog,
}

/// Events/s of `instances` projector instances sharing P = 8 partitions over a backlog of
/// about `events`, and the CPU they used.
async fn projectors(
    events: usize,
    instances: usize,
    start: Start,
) -> anyhow::Result<(f64, String)> {
    let jwks = JwksServer::start().await?;
    let mut settings = test_config(fresh_database().await?, &jwks);
    settings.connections.partitions = Partitions::new(PARTITIONS)?;
    let app = TestApp::spawn_with(settings, jwks).await?;
    let mut seeded = match start {
        Start::OnBacklog => crate::project::backlog(&app, events).await?,
        Start::Settled => 0,
    };
    let redis_url = principals().redis_url(Principal::Admin);
    let mut cpu = crate::cpu::sample(&redis_url).await;
    let mut started = Instant::now();
    let mut running = Vec::with_capacity(instances);
    for _ in 0..instances {
        running.push(
            Running::start_with(config(&app), &[Projection::Posts, Projection::Authors]).await,
        );
    }
    let share = PARTITIONS as usize / instances;
    let deadline = Instant::now() + Duration::from_secs(60);
    let owners = loop {
        let owners = partition_owners(&app.pool, &Projection::Posts.consumer()).await;
        if owners.len() == instances && owners.values().all(|n| *n == share) {
            break owners;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the partitions were never shared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if start == Start::Settled {
        cpu = crate::cpu::sample(&redis_url).await;
        started = Instant::now();
        seeded = crate::project::backlog(&app, events).await?;
    }
    crate::project::applied(&app).await?;
    let rate = seeded as f64 / started.elapsed().as_secs_f64();
    let cpu_line = cpu
        .report(&redis_url, &format!("{instances} instance(s)"))
        .await;
    for instance in running {
        instance.stop().await;
    }
    app.stop().await;
    Ok((
        rate,
        format!("{cpu_line}; posts partitions by owner {owners:?}"),
    ))
}

/// Three hubs, `sockets_per_hub` sockets on each, `notifications` to random users (half
/// of the users have no socket): each hub's received count against its users' share.
async fn hubs(sockets_per_hub: usize, notifications: usize) -> anyhow::Result<Figure> {
    let database_url = fresh_database().await?;
    let (stream, subject_prefix) = (unique_name("SCALE_HUBS"), unique_subject_prefix());
    let mut apps = Vec::with_capacity(HUBS);
    for _ in 0..HUBS {
        let jwks = JwksServer::start().await?;
        let mut settings = test_config(database_url.clone(), &jwks);
        settings.connections.stream = stream.clone();
        settings.connections.subject_prefix = subject_prefix.clone();
        apps.push(TestApp::spawn_with(settings, jwks).await?);
    }
    // Users 0..HUBS*n have a socket on hub `i % HUBS`; as many more have none.
    let online = HUBS * sockets_per_hub;
    let users: Vec<Uuid> = (0..2 * online).map(|_| Uuid::new_v4()).collect();
    let delivered = Arc::new(AtomicU64::new(0));
    let sockets: Vec<(String, String)> = users[..online]
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let token = mint(dev_issuer::TokenRequest {
                sub: user.to_string(),
                roles: vec!["user".into()],
                alg: dev_issuer::Alg::Es256,
                ..Default::default()
            });
            (apps[i % HUBS].base_url.clone(), token)
        })
        .collect();
    let readers: Vec<_> = futures::stream::iter(sockets)
        .map(|(base_url, token)| async move { crate::fanout::open_socket(&base_url, &token).await })
        .buffer_unordered(100)
        .map_ok(|ws| {
            let delivered = delivered.clone();
            tokio::spawn(async move {
                let mut ws = ws;
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .try_collect()
        .await?;
    // Every online user's channel subscribed by exactly one hub.
    let admin = redis::Client::open(principals().redis_url(Principal::Admin))?;
    let mut redis = admin.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB");
        for user in &users[..online] {
            numsub.arg(format!("notify.user.{user}"));
        }
        let counts: Vec<(String, i64)> = numsub.query_async(&mut redis).await?;
        if counts.iter().all(|(_, n)| *n == 1) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the hubs never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut notifier = Notifier::new(&apps[0]).await;
    let mut addressed = vec![0u64; HUBS];
    let mut rng = rand::thread_rng();
    for n in 0..notifications {
        let index = rng.gen_range(0..users.len());
        if index < online {
            addressed[index % HUBS] += 1;
        }
        let notification = Notifier::notification(users[index], serde_json::json!({ "n": n }));
        anyhow::ensure!(
            notifier.publish(&notification).await.is_some(),
            "a fresh notification was dropped"
        );
    }
    let expected: u64 = addressed.iter().sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered.load(Ordering::Relaxed) < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {expected} frames delivered",
            delivered.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut received = Vec::with_capacity(HUBS);
    for app in &apps {
        received.push(hub_received(app).await?);
    }
    for (hub, (got, share)) in received.iter().zip(&addressed).enumerate() {
        println!(
            "scale hubs: hub {hub}: {sockets_per_hub} sockets, received {got} notifications, \
             {share} addressed to its users (of {notifications} published, {} to users with no socket)",
            notifications as u64 - expected
        );
    }
    for reader in readers {
        reader.abort();
    }
    let total_received: u64 = received.iter().sum();
    for app in apps {
        app.stop().await;
    }
    Ok(Figure::ratio(
        "scale: notifications received by 3 hubs",
        total_received as f64,
        "notifications",
        "addressed to their users",
        expected as f64,
        Some(1.0),
    ))
}

/// `keel_hub_notifications_received_total` of `app`'s hub.
async fn hub_received(app: &TestApp) -> anyhow::Result<u64> {
    let text = reqwest::get(app.internal("/metrics")).await?.text().await?;
    let metrics: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    Ok(metrics
        .get("keel_hub_notifications_received_total")
        .and_then(|v| v.parse().ok())
        .unwrap_or_default())
}

/// Outbox drain events/s into an R1 and an R3 stream of a fresh three-node cluster.
async fn replicas(events: usize) -> anyhow::Result<(f64, f64)> {
    let cluster = NatsCluster::start().await?;
    let url = cluster.url_for(Principal::CommandApi);
    let (r1, _, _) = crate::publish::drain_rate_on(events, &url, 1).await?;
    let (r3, _, _) = crate::publish::drain_rate_on(events, &url, 3).await?;
    Ok((r1, r3))
}
