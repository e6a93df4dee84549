//! `KEEL_PARTITIONS`: events carry their partition in the subject, a stream keeps the
//! count it was made with, and projectors and relays run as several instances sharing the
//! partitions: one owner each, taken over within seconds when an instance is SIGKILLed,
//! with nothing lost, duplicated or reordered within a stream.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use events::partitions::Partitions;
use events::read_model::Projection;
use keel_tests::notifications::{Connect, assert_each_comment_once, connect, positions_of};
use keel_tests::principals::Principal;
use keel_tests::projections::{assert_live_equals_rebuilt, caught_up, partition_owners, seed_blog};
use keel_tests::stream::messages;
use keel_tests::test_app::{comment_as, test_config};
use keel_tests::worker_process::WorkerProcess;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};

/// A test app whose stream has `partitions` partitions.
async fn app_with(partitions: u32) -> TestApp {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.partitions = Partitions::new(partitions).unwrap();
    TestApp::spawn_with(config, jwks).await.unwrap()
}

/// Waits (30 s at most) until `group`'s `partitions` partitions are all owned, by
/// `instances` instances holding an even share each; returns the owners.
async fn shared_by(
    app: &TestApp,
    group: &str,
    partitions: usize,
    instances: usize,
) -> BTreeMap<String, usize> {
    eventually(
        Duration::from_secs(30),
        &format!("{group}: {partitions} partitions shared by {instances} instance(s)"),
        || async {
            let owners = partition_owners(&app.pool, group).await;
            let share = partitions / instances;
            if owners.len() == instances && owners.values().all(|n| *n == share) {
                Ok(owners)
            } else {
                Err(format!("owners {owners:?}"))
            }
        },
    )
    .await
}

/// SIGKILLs `victim`, one of the two instances sharing `group`'s partitions, and waits
/// until the other owns them all: within 10 s (the time is printed).
async fn kill_and_time_takeover(
    app: &TestApp,
    victim: WorkerProcess,
    group: &str,
    partitions: usize,
) {
    victim.kill();
    let killed = Instant::now();
    let survivor = shared_by(app, group, partitions, 1).await;
    let takeover = killed.elapsed();
    println!(
        "{group}: takeover of the killed instance's partitions: {:.1} s (owner now {survivor:?})",
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= Duration::from_secs(10),
        "{group}: takeover took {takeover:?}"
    );
}

/// Runs `args` of `binary` (with `env`) to its end, within a minute: status and stderr.
async fn run_to_end(binary: &str, args: &[&str], env: &[(&str, String)]) -> (bool, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(keel_tests::api_process::binary_named(binary))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{binary} {args:?} did not end within a minute"))
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until the log holds `n` comments.
async fn comments_reach(app: &TestApp, n: usize) {
    eventually(Duration::from_secs(60), "comments arrive", || async {
        let comments: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'comment.added'")
                .fetch_one(&app.pool)
                .await
                .map_err(|e| e.to_string())?;
        if comments >= n as i64 {
            Ok(())
        } else {
            Err(format!("{comments} comments"))
        }
    })
    .await;
}

#[tokio::test]
async fn events_carry_their_partition_and_the_stream_refuses_another_count() {
    let app = app_with(4).await;
    seed_blog(&app.pool, 10, 20, 120).await.unwrap();
    let count = app.event_count().await as usize;
    let nats = app.nats_admin_url();
    let stored = eventually(
        Duration::from_secs(60),
        "every event is in the stream",
        || async {
            let stored = messages(&nats, &app.stream)
                .await
                .map_err(|e| e.to_string())?;
            if stored.len() == count {
                Ok(stored)
            } else {
                Err(format!("{} of {count}", stored.len()))
            }
        },
    )
    .await;
    let partitions = Partitions::new(4).unwrap();
    let mut used = BTreeSet::new();
    for message in &stored {
        let (event_type, stream_id) = (
            message.body["type"].as_str().unwrap(),
            message.body["subject"].as_str().unwrap(),
        );
        let partition = partitions.of(stream_id);
        assert_eq!(
            message.subject,
            format!("{}.{event_type}.{partition}", app.subject_prefix),
            "the subject names the partition of the stream id"
        );
        used.insert(partition);
    }
    assert_eq!(used.len(), 4, "30 streams spread over all 4 partitions");

    // A publisher, the API or a worker configured with another count refuses to start,
    // and the stream keeps its count and its events.
    let mut env = vec![
        ("DATABASE_URL", app.database_url.clone()),
        ("NATS_URL", app.nats_url_of(Principal::CommandApi)),
        ("KEEL_STREAM", app.stream.clone()),
        ("KEEL_SUBJECT_PREFIX", app.subject_prefix.clone()),
        ("KEEL_PARTITIONS", "2".to_owned()),
    ];
    let (started, stderr) = run_to_end("command-api", &["publisher"], &env).await;
    assert!(!started, "the publisher refuses a stream of 4 partitions");
    assert!(
        stderr.contains("has 4 partition(s) and KEEL_PARTITIONS is 2"),
        "the refusal says why: {stderr}"
    );
    env[1] = ("NATS_URL", app.nats_url_of(Principal::Projectors));
    env.push(("REDIS_URL", app.redis_url_of(Principal::Projectors)));
    env[4] = ("KEEL_PARTITIONS", "1".to_owned());
    let (started, stderr) = run_to_end("projectors", &["run"], &env).await;
    assert!(!started, "the projectors refuse a stream of 4 partitions");
    assert!(
        stderr.contains("has 4 partition(s) and KEEL_PARTITIONS is 1"),
        "the refusal says why: {stderr}"
    );
    let stream = messages(&nats, &app.stream).await.unwrap();
    assert_eq!(stream.len(), count, "nothing was published meanwhile");
    let client = keel_tests::principals::nats_connect(&nats).await.unwrap();
    let mut handle = async_nats::jetstream::new(client)
        .get_stream(&app.stream)
        .await
        .unwrap();
    assert_eq!(
        handle.info().await.unwrap().config.description.as_deref(),
        Some("keel partitions=4")
    );
    app.stop().await;
}

/// One projector process owns all 8 partitions under load; a second joins (the
/// partitions rebalance, 4 and 4); under more load the first is SIGKILLed and the second
/// takes everything over. Every model ends equal to its rebuild from the log.
#[tokio::test]
async fn two_projector_instances_share_8_partitions_and_one_takes_over_when_the_other_is_killed() {
    const PARTITIONS: usize = 8;
    let app = app_with(PARTITIONS as u32).await;
    let group = Projection::Posts.consumer();
    let first = WorkerProcess::spawn("projectors", &app);
    shared_by(&app, &group, PARTITIONS, 1).await;
    seed_blog(&app.pool, 20, 40, 300).await.unwrap();
    let second = WorkerProcess::spawn("projectors", &app);
    shared_by(&app, &group, PARTITIONS, 2).await;

    // More load while both run; one is SIGKILLed in the middle of it.
    seed_blog(&app.pool, 20, 40, 400).await.unwrap();
    kill_and_time_takeover(&app, first, &group, PARTITIONS).await;

    caught_up(&app.pool, Duration::from_secs(60)).await;
    let status = projectors::operations::status(&app.pool).await.unwrap();
    for line in &status {
        assert_eq!(line.dead_letters, 0, "{line}");
        assert_eq!(line.partitions.len(), PARTITIONS, "{line}");
        assert!(
            line.to_string()
                .contains(&format!(" partitions={PARTITIONS} owners=")),
            "status names the owners: {line}"
        );
    }
    // Every effect exactly once: each live model equals a fold of the log.
    drop(second);
    assert_live_equals_rebuilt(&app).await;
    app.stop().await;
}

/// Comments on eight posts of one author (spread over the partitions): one relay owns the
/// 4 partitions, a second joins mid-load (the partitions rebalance, 2 and 2), and later
/// the first is SIGKILLed mid-load. The author receives every comment's notification
/// once, and each post's in the order of its comments.
#[tokio::test]
async fn relays_share_the_partitions_and_a_killed_one_loses_and_duplicates_no_notification() {
    const PARTITIONS: usize = 4;
    const POSTS: usize = 8;
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 100;
    /// Each writer's pace: the load lasts about six seconds, long enough for a join and a
    /// kill to land in the middle of it.
    const PACE: Duration = Duration::from_millis(60);
    let app = app_with(PARTITIONS as u32).await;
    let (_, author_token) = app.register("Ada Author").await;
    let mut posts = Vec::new();
    for _ in 0..POSTS {
        posts.push(app.published_post(&author_token).await);
    }
    let mut socket = connect(&app, Connect::header(&author_token)).await;
    let first = WorkerProcess::spawn("relay", &app);
    shared_by(&app, relay::CONSUMER, PARTITIONS, 1).await;

    let total = WRITERS * PER_WRITER;
    let reader = tokio::spawn(async move { socket.take(total).await });
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (_, token) = app.register(&format!("Writer {w}")).await;
        let (client, base, posts) = (app.client.clone(), app.base_url.clone(), posts.clone());
        writers.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(PACE);
            for i in 0..PER_WRITER {
                pace.tick().await;
                let post = posts[(w + i) % POSTS];
                comment_as(&client, &base, post, &token, &format!("comment {w}.{i}")).await;
            }
        }));
    }
    // A second relay joins once a third of the comments are in; the first is killed
    // once two thirds are.
    comments_reach(&app, total / 3).await;
    let _second = WorkerProcess::spawn("relay", &app);
    shared_by(&app, relay::CONSUMER, PARTITIONS, 2).await;
    comments_reach(&app, 2 * total / 3).await;
    kill_and_time_takeover(&app, first, relay::CONSUMER, PARTITIONS).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let frames = reader.await.unwrap();

    assert_each_comment_once(&frames, total);
    let positions = positions_of(&app.pool, "comment.added").await;
    let mut per_post: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for frame in &frames {
        per_post
            .entry(frame["data"]["post_id"].as_str().unwrap())
            .or_default()
            .push(positions[frame["event_id"].as_str().unwrap()]);
    }
    assert_eq!(per_post.len(), POSTS);
    for (post, order) in &per_post {
        assert!(
            order.is_sorted(),
            "post {post}: notifications out of its stream's order: {order:?}"
        );
    }
    let offsets: Vec<&str> = frames
        .iter()
        .map(|f| f["offset"].as_str().unwrap())
        .collect();
    assert_eq!(
        offsets.iter().collect::<HashSet<_>>().len(),
        total,
        "every notification has its own offset"
    );
    app.stop().await;
}
