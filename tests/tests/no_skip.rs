//! Readers never skip an event (PROMISES P5): many appenders, some holding their
//! transaction open, some rolling back, while a tailer reads "everything after the last
//! position I saw". The tailer must see every committed event exactly once, in order.

use std::collections::HashSet;
use std::time::Duration;

use domain::ids::{Position, StreamId, UserId};
use domain::recorded::Metadata;
use domain::{Event, UserEvent, user::UserDeactivated};
use events::event_log::{self, ExpectedVersion};
use sqlx::postgres::PgPoolOptions;
use tokio::sync::watch;

const WRITERS: usize = 32;
const APPENDS_PER_WRITER: usize = 40;

fn event(user: UserId) -> Event {
    Event::User(UserEvent::Deactivated(UserDeactivated { id: user }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailer_sees_every_committed_event_once_in_position_order() {
    let url = keel_tests::fresh_database().await.unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(40)
        .connect(&url)
        .await
        .unwrap();
    events::MIGRATOR.run(&pool).await.unwrap();

    let (done_tx, done_rx) = watch::channel(false);
    let tailer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(Position, uuid::Uuid)> = Vec::new();
            let mut cursor = Position(0);
            loop {
                let finished = *done_rx.borrow();
                let batch = event_log::read_all(&pool, cursor, 100).await.unwrap();
                for e in &batch {
                    seen.push((e.position, e.event_id.0));
                    cursor = e.position;
                }
                if finished && batch.is_empty() {
                    return seen;
                }
            }
        })
    };

    let writers = (0..WRITERS).map(|w| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut committed = Vec::new();
            for i in 0..APPENDS_PER_WRITER {
                let stream = StreamId::user(UserId::new());
                let mut tx = pool.begin().await.unwrap();
                let appended = event_log::append(
                    &mut tx,
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![(event(UserId::new()), Metadata::default())],
                )
                .await
                .unwrap();
                // Hold some transactions open between INSERT and COMMIT.
                if (w + i) % 7 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if (w + i) % 11 == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.push(appended[0].event_id.0);
                }
            }
            committed
        })
    });
    let mut committed: HashSet<uuid::Uuid> = HashSet::new();
    for writer in futures::future::join_all(writers).await {
        committed.extend(writer.unwrap());
    }
    done_tx.send(true).unwrap();
    let seen = tailer.await.unwrap();

    let seen_ids: Vec<uuid::Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let unique: HashSet<uuid::Uuid> = seen_ids.iter().copied().collect();
    assert_eq!(unique.len(), seen_ids.len(), "no event seen twice");
    let missed = committed.difference(&unique).count();
    assert_eq!(
        missed,
        0,
        "missed {missed} of {} committed events",
        committed.len()
    );
    assert_eq!(unique, committed, "nothing rolled back was seen");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "positions strictly increase"
    );
    assert!(committed.len() > WRITERS * APPENDS_PER_WRITER * 8 / 10);
}

#[tokio::test]
async fn append_refuses_a_stale_expected_version_with_a_typed_conflict() {
    let url = keel_tests::fresh_database().await.unwrap();
    let pool = PgPoolOptions::new().connect(&url).await.unwrap();
    events::MIGRATOR.run(&pool).await.unwrap();
    let user = UserId::new();
    let stream = StreamId::user(user);
    let mut tx = pool.begin().await.unwrap();
    event_log::append(
        &mut tx,
        &stream,
        ExpectedVersion::NoStream,
        vec![(event(user), Metadata::default())],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exactly(domain::ids::Version(3)),
    ] {
        let mut tx = pool.begin().await.unwrap();
        let result = event_log::append(
            &mut tx,
            &stream,
            expected,
            vec![(event(user), Metadata::default())],
        )
        .await;
        assert!(
            matches!(result, Err(event_log::AppendError::Conflict { actual, .. }) if actual.0 == 1),
            "{result:?}"
        );
    }
    let rewrite = sqlx::query("UPDATE events SET data = '{}'")
        .execute(&pool)
        .await;
    assert!(rewrite.is_err(), "the log is append-only");
}
