//! The projectors under test: in-process workers or the real binary (to SIGKILL), on the
//! test app's own database, stream and cache prefix; and the checks every projection test
//! ends with: the projections caught up with the log, and each live model equal to a
//! model rebuilt from the log.

use std::collections::BTreeMap;
use std::time::Duration;

use events::read_model::Projection;
use serde_json::Value;

use crate::principals::Principal;
use crate::{TestApp, eventually};

/// The projectors' configuration for `app`'s database, stream and subjects, as the
/// projectors' principal.
pub fn config(app: &TestApp) -> projectors::Config {
    projectors::Config {
        connections: worker_settings(app, Principal::Projectors),
    }
}

/// A worker's connection settings for `app`'s database, stream and subjects, as
/// `principal`.
pub fn worker_settings(app: &TestApp, principal: Principal) -> events::settings::Settings {
    events::settings::Settings {
        database_url: app.database_url.clone(),
        migrate_database_url: None,
        nats_url: app.nats_url_of(principal),
        nats_creds: None,
        redis_url: app.redis_url_of(principal),
        tls_ca_file: None,
        stream: app.stream.clone(),
        subject_prefix: app.subject_prefix.clone(),
        partitions: app.partitions,
    }
}

/// Every projection running in this process until dropped or stopped.
pub struct Running {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(app: &TestApp) -> Self {
        Self::start_with(config(app), &Projection::ALL).await
    }

    pub async fn start_with(config: projectors::Config, projections: &[Projection]) -> Self {
        let workers = projectors::build(&config, projections)
            .await
            .expect("the projectors start");
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(workers.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops gracefully (the batches in hand are finished) and waits.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits until every projection has applied the whole log.
pub async fn caught_up(pool: &sqlx::PgPool, within: Duration) {
    eventually(within, "every projection applied the log", || async {
        let lines = projectors::operations::status(pool)
            .await
            .map_err(|e| e.to_string())?;
        if lines.iter().all(|l| l.lag == 0) {
            Ok(())
        } else {
            Err(lines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "))
        }
    })
    .await;
}

/// A model's tables (and its versions per stream) as sorted JSON rows: two models are
/// equal when their dumps are.
pub async fn dump(pool: &sqlx::PgPool, projection: Projection) -> BTreeMap<String, Vec<Value>> {
    let schema = projection.schema();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = $1 AND table_name <> 'checkpoint' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .expect("listing the model's tables");
    let mut dump = BTreeMap::new();
    for table in tables {
        let rows: Vec<Value> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) - 'failed_at' FROM {schema}.{table} t ORDER BY to_jsonb(t)::text"
        ))
        .fetch_all(pool)
        .await
        .expect("reading the model");
        dump.insert(table, rows);
    }
    dump
}

/// Asserts that every live model equals the model rebuilt from the log (the rebuild then
/// stays in place).
pub async fn assert_live_equals_rebuilt(app: &TestApp) {
    for projection in Projection::ALL {
        assert_model_equals_rebuilt(app, projection).await;
    }
}

/// Asserts that one live model equals the model rebuilt from the log.
pub async fn assert_model_equals_rebuilt(app: &TestApp, projection: Projection) {
    let (pool, cache) = projectors::open(&config(app)).await.expect("open");
    let live = dump(&pool, projection).await;
    projectors::rebuild::rebuild(&pool, projection, &cache)
        .await
        .expect("the rebuild succeeds");
    let rebuilt = dump(&pool, projection).await;
    for (table, rows) in &rebuilt {
        assert_eq!(
            live.get(table),
            Some(rows),
            "{projection}.{table}: the live model differs from the rebuilt one"
        );
    }
    assert_eq!(live.len(), rebuilt.len(), "{projection}: tables differ");
}

/// Appends a blog's history straight into the log (fast volume for fault tests and
/// benchmarks): `users` registrations, `posts` posts created and published by them, then
/// `reactions` comments and likes on random posts by random users (each user likes a
/// post at most once, as the deciders allow). Returns how many events it appended.
pub async fn seed_blog(
    pool: &sqlx::PgPool,
    users: usize,
    posts: usize,
    reactions: usize,
) -> anyhow::Result<usize> {
    use std::collections::{HashMap, HashSet};

    use domain::ids::{CommentId, EventId, PostId, StreamId, UserId, Version};
    use domain::post::{CommentAdded, PostCreated, PostLiked, PostPublished};
    use domain::recorded::Metadata;
    use domain::user::UserRegistered;
    use domain::{Event, PostEvent, Role, UserEvent};
    use events::event_log::{self, NewEvent};
    use rand::Rng;

    let mut rng = rand::thread_rng();
    let mut versions: HashMap<StreamId, i64> = HashMap::new();
    let mut rows: Vec<NewEvent> = Vec::new();
    let mut push = |stream: StreamId, event: Event, rows: &mut Vec<NewEvent>| {
        let version = versions.entry(stream.clone()).or_insert(0);
        *version += 1;
        rows.push(NewEvent {
            event_id: EventId::new(),
            stream_id: stream,
            version: Version(*version),
            event,
            metadata: Metadata::default(),
        });
    };
    let user_ids: Vec<UserId> = (0..users).map(|_| UserId::new()).collect();
    for (i, id) in user_ids.iter().enumerate() {
        let event = UserEvent::Registered(UserRegistered {
            id: *id,
            email: format!("seed{i}@pii.test"),
            name: format!("Seed {i}"),
            roles: vec![Role::User],
        });
        push(StreamId::user(*id), Event::User(event), &mut rows);
    }
    let mut post_ids = Vec::with_capacity(posts);
    for i in 0..posts {
        let (id, author_id) = (PostId::new(), user_ids[i % users]);
        post_ids.push((id, author_id));
        let created = PostEvent::Created(PostCreated {
            id,
            author_id,
            title: format!("Post {i}"),
            body: "seeded".to_owned(),
        });
        push(StreamId::post(id), Event::Post(created), &mut rows);
        let published = PostEvent::Published(PostPublished { id, author_id });
        push(StreamId::post(id), Event::Post(published), &mut rows);
    }
    let mut likes: HashSet<(PostId, UserId)> = HashSet::new();
    for _ in 0..reactions {
        let (post_id, post_author_id) = post_ids[rng.gen_range(0..posts)];
        let user_id = user_ids[rng.gen_range(0..users)];
        let event = if rng.gen_bool(0.5) && likes.insert((post_id, user_id)) {
            PostEvent::Liked(PostLiked {
                post_id,
                user_id,
                post_author_id,
            })
        } else {
            PostEvent::CommentAdded(CommentAdded {
                post_id,
                comment_id: CommentId::new(),
                author_id: user_id,
                post_author_id,
                body: "seeded comment".to_owned(),
            })
        };
        push(StreamId::post(post_id), Event::Post(event), &mut rows);
    }
    let appended = rows.len();
    for chunk in rows.chunks(1000) {
        let mut tx = pool.begin().await?;
        event_log::insert(&mut tx, chunk).await?;
        tx.commit().await?;
    }
    Ok(appended)
}

/// The live owners of `group`'s partitions (`projector-<name>`, `relay-notifications`):
/// instance -> how many it holds.
pub async fn partition_owners(pool: &sqlx::PgPool, group: &str) -> BTreeMap<String, usize> {
    let mut owners = BTreeMap::new();
    for owner in events::lease::owners(pool, group)
        .await
        .expect("reading the partition leases")
    {
        if let (Some(name), true) = (owner.owner, owner.live) {
            *owners.entry(name).or_default() += 1;
        }
    }
    owners
}
