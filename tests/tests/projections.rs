//! The projectors end to end (PROMISES P6, P7, P8, P12): commands in through the real API,
//! events through the real JetStream, read models in Postgres, served by the query
//! endpoints; every test ends with the live models equal to models rebuilt from the log.

use std::time::Duration;

use keel_tests::TestApp;
use keel_tests::projections::{
    Running, assert_live_equals_rebuilt, assert_model_equals_rebuilt, caught_up,
};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(30);

/// A command's global position (the read-your-writes token).
async fn position_of(response: reqwest::Response) -> i64 {
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    body["position"].as_i64().unwrap()
}

/// GET with `X-Min-Position`, expecting 200.
async fn read(app: &TestApp, path: &str, token: &str, at: i64) -> Value {
    let response = app
        .request(Method::GET, path, token)
        .header("x-min-position", at.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn read_models_follow_the_commands_and_equal_a_rebuild() {
    let app = TestApp::spawn().await.unwrap();
    let projectors = Running::start(&app).await;
    let (ada, ada_token) = app.register("Ada").await;
    let (bob, bob_token) = app.register("Bob").await;
    let post = app.published_post(&ada_token).await;
    let draft = app
        .send(
            Method::POST,
            "/api/posts",
            &ada_token,
            json!({"title": "Draft", "body": "Not yet"}),
        )
        .await;
    assert_eq!(draft.status(), 201);
    let commented = app
        .send(
            Method::POST,
            &format!("/api/posts/{post}/comments"),
            &bob_token,
            json!({"body": "Nice post!"}),
        )
        .await;
    position_of(commented).await;
    let liked = app
        .request(Method::PUT, &format!("/api/posts/{post}/like"), &bob_token)
        .send()
        .await
        .unwrap();
    position_of(liked).await;
    let renamed = app
        .send(
            Method::PATCH,
            &format!("/api/users/{ada}"),
            &ada_token,
            json!({"name": "Ada Lovelace"}),
        )
        .await;
    let at = position_of(renamed).await;

    let shown = read(&app, &format!("/api/posts/{post}"), &bob_token, at).await;
    assert_eq!(shown["author"], json!({"id": ada, "name": "Ada Lovelace"}));
    assert_eq!(shown["like_count"], 1);
    assert_eq!(shown["comments"][0]["author"]["name"], "Bob");
    let author = read(&app, &format!("/api/authors/{ada}"), &bob_token, at).await;
    assert_eq!(author["name"], "Ada Lovelace");
    assert_eq!(author["post_count"], 1);
    let listed = read(&app, &format!("/api/posts?author_id={ada}"), &bob_token, at).await;
    assert_eq!(listed["items"][0]["author"]["name"], "Ada Lovelace");
    assert_eq!(listed["items"][0]["comment_count"], 1);
    let user = read(&app, &format!("/api/users/{ada}"), &ada_token, at).await;
    assert_eq!(user["name"], "Ada Lovelace");
    let dashboard = read(&app, "/api/me/dashboard", &ada_token, at).await;
    assert_eq!(dashboard["drafts"].as_array().unwrap().len(), 1);
    assert_eq!(dashboard["published"][0]["id"], json!(post));
    assert_eq!(dashboard["likes_received"], 1);
    assert_eq!(
        dashboard["recent_comments"][0]["author"],
        json!({"id": bob, "name": "Bob"})
    );

    caught_up(&app.pool, WITHIN).await;
    assert_live_equals_rebuilt(&app).await;
    projectors.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn every_read_after_a_command_with_its_position_sees_that_command() {
    let app = TestApp::spawn().await.unwrap();
    let projectors = Running::start(&app).await;
    let (ada, token) = app.register("Ada").await;
    let mut stale = Vec::new();
    for round in 0..100 {
        let name = format!("Ada {round}");
        let at = position_of(
            app.send(
                Method::PATCH,
                &format!("/api/users/{ada}"),
                &token,
                json!({ "name": name }),
            )
            .await,
        )
        .await;
        let user = read(&app, &format!("/api/users/{ada}"), &token, at).await;
        let author = read(&app, &format!("/api/authors/{ada}"), &token, at).await;
        if user["name"] != name.as_str() || author["name"] != name.as_str() {
            stale.push((round, user["name"].clone(), author["name"].clone()));
        }
    }
    assert!(stale.is_empty(), "stale reads: {stale:?}");
    projectors.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn a_read_waits_for_a_position_no_projection_has_applied_and_then_refuses() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    // No projector runs: the registration is in the log but in no read model.
    let response = app
        .request(Method::GET, &format!("/api/users/{ada}"), &token)
        .header("x-min-position", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    app.stop().await;
}

/// A post row the projection cannot store: a trigger on the live model refuses titles
/// named in `keel_test_refusals`, each as many times as its `times` says (-1: always).
async fn refuse_titles(app: &TestApp, refusals: &[(&str, i32)]) {
    sql(
        app,
        "CREATE TABLE keel_test_refusals (title text PRIMARY KEY, times int NOT NULL)",
    )
    .await;
    for (title, times) in refusals {
        sqlx::query("INSERT INTO keel_test_refusals VALUES ($1, $2)")
            .bind(title)
            .bind(times)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    sql(
        app,
        "CREATE FUNCTION keel_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE
             times int;
         BEGIN
             SELECT r.times INTO times FROM keel_test_refusals r WHERE r.title = NEW.title;
             -- A sequence is not rolled back with the refused transaction: it counts.
             IF FOUND AND (times < 0 OR nextval('keel_test_refusal_count') <= times) THEN
                 RAISE EXCEPTION 'refused by the test: %', NEW.title;
             END IF;
             RETURN NEW;
         END $$",
    )
    .await;
    sql(app, "CREATE SEQUENCE keel_test_refusal_count").await;
    sql(
        app,
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON rm_posts.posts
         FOR EACH ROW EXECUTE FUNCTION keel_test_refuse()",
    )
    .await;
}

async fn create_post(app: &TestApp, token: &str, title: &str) -> Uuid {
    let response = app
        .send(
            Method::POST,
            "/api/posts",
            token,
            json!({"title": title, "body": "text"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["id"].as_str().unwrap().parse().unwrap()
}

async fn post_titles(app: &TestApp) -> Vec<String> {
    let mut titles: Vec<String> = sqlx::query_scalar("SELECT title FROM rm_posts.posts")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    titles.sort();
    titles
}

#[tokio::test]
async fn an_event_that_fails_once_is_applied_exactly_once_and_later_events_too() {
    let app = TestApp::spawn().await.unwrap();
    refuse_titles(&app, &[("flaky", 1)]).await;
    let projectors = Running::start(&app).await;
    let (_, token) = app.register("Ada").await;
    create_post(&app, &token, "before").await;
    let flaky = create_post(&app, &token, "flaky").await;
    create_post(&app, &token, "after").await;
    let liked = app.published_post(&token).await;
    let (_, bob) = app.register("Bob").await;
    app.request(Method::PUT, &format!("/api/posts/{liked}/like"), &bob)
        .send()
        .await
        .unwrap();
    caught_up(&app.pool, WITHIN).await;
    assert_eq!(
        post_titles(&app).await,
        ["Hello", "after", "before", "flaky"]
    );
    let refused: i64 = sqlx::query_scalar("SELECT last_value FROM keel_test_refusal_count")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(refused >= 1, "the flaky event was never refused");
    let version: i64 = sqlx::query_scalar(
        "SELECT version FROM rm_posts.applied WHERE stream_id = 'post-' || $1::text",
    )
    .bind(flaky)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(version, 1);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_posts.dead_letters")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    projectors.stop().await;
    assert_live_equals_rebuilt(&app).await;
    app.stop().await;
}

/// The dead-letter stream's messages: (consumer, reason) headers.
async fn dead_letter_messages(app: &TestApp) -> Vec<(String, String)> {
    let client = keel_tests::principals::nats_connect(&app.nats_admin_url())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream
        .get_stream(events::nats::dead_letter_stream(&app.stream))
        .await
        .unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    let mut letters = Vec::new();
    for sequence in 1..=stored {
        let message = stream.get_raw_message(sequence).await.unwrap();
        let headers = message.headers;
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        letters.push((header("Keel-Consumer"), header("Keel-Reason")));
    }
    letters
}

/// Asserts how many dead letters of `projector-posts` the dead-letter stream holds.
async fn assert_posts_dead_letters_on_bus(app: &TestApp, expected: usize) {
    let on_bus = dead_letter_messages(app).await;
    assert_eq!(
        on_bus
            .iter()
            .filter(|(c, _)| c == "projector-posts")
            .count(),
        expected,
        "{on_bus:?}"
    );
}

/// The projectors may only publish dead letters, not create their stream: while it is
/// missing, a dead letter waits (nothing skipped, nothing recorded); once the command API
/// has made the stream again, it is dead-lettered once.
#[tokio::test]
async fn a_dead_letter_waits_until_the_command_api_has_made_its_stream() {
    let app = TestApp::spawn().await.unwrap();
    let admin = async_nats::jetstream::new(
        keel_tests::principals::nats_connect(&app.nats_admin_url())
            .await
            .unwrap(),
    );
    // Once the publisher has published, it has made its streams; it makes them again
    // only when it next takes the lead.
    let (_, token) = app.register("Ada").await;
    let admin_url = app.nats_admin_url();
    keel_tests::eventually(
        Duration::from_secs(20),
        "the publisher publishes",
        || async {
            match keel_tests::stream::count(&admin_url, &app.stream).await {
                Ok(0) => Err("nothing on the bus yet".to_owned()),
                Ok(_) => Ok(()),
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await;
    let dead_letter_stream = events::nats::dead_letter_stream(&app.stream);
    admin.delete_stream(&dead_letter_stream).await.unwrap();
    refuse_titles(&app, &[("poison", -1)]).await;
    let projectors = Running::start(&app).await;
    create_post(&app, &token, "poison").await;
    create_post(&app, &token, "healthy").await;
    keel_tests::eventually(
        Duration::from_secs(30),
        "authors applied the log",
        || async {
            let status = projectors::operations::status(&app.pool)
                .await
                .map_err(|e| e.to_string())?;
            match status.iter().find(|s| s.name == "authors") {
                Some(authors) if authors.lag == 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let status = projectors::operations::status(&app.pool).await.unwrap();
    let posts = status.iter().find(|s| s.name == "posts").unwrap();
    assert_eq!(posts.dead_letters, 0, "dead-lettered without a stream");
    assert!(admin.get_stream(&dead_letter_stream).await.is_err());

    // The command API (re)starts and makes its streams.
    let jwks = keel_tests::JwksServer::start().await.unwrap();
    let mut config = keel_tests::test_app::test_config(app.database_url.clone(), &jwks);
    config.connections.stream = app.stream.clone();
    config.connections.subject_prefix = app.subject_prefix.clone();
    let second = TestApp::spawn_with(config, jwks).await.unwrap();
    caught_up(&app.pool, Duration::from_secs(60)).await;
    assert_eq!(post_titles(&app).await, ["healthy"]);
    assert_posts_dead_letters_on_bus(&app, 1).await;
    projectors.stop().await;
    second.stop_keeping_stream().await;
    app.stop().await;
}

#[tokio::test]
async fn poison_events_are_dead_lettered_and_later_events_still_apply() {
    let app = TestApp::spawn().await.unwrap();
    refuse_titles(&app, &[("poison", -1)]).await;
    let projectors = Running::start(&app).await;
    let (_, token) = app.register("Ada").await;
    let poisoned = create_post(&app, &token, "poison").await;
    // An event no code can decode, written straight into the log.
    let undecodable = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata)
         VALUES ($1, 'post-' || $2::text, 1, 'post.created', 1, '{\"garbage\": true}', '{}')",
    )
    .bind(Uuid::now_v7())
    .bind(undecodable)
    .execute(&app.pool)
    .await
    .unwrap();
    create_post(&app, &token, "healthy").await;
    // Later events of the poisoned stream apply on top once it is dead-lettered.
    let published = app
        .request(
            Method::POST,
            &format!("/api/posts/{poisoned}/publish"),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 200);
    caught_up(&app.pool, Duration::from_secs(60)).await;

    let letters =
        projectors::operations::dead_letters(&app.pool, &[events::read_model::Projection::Posts])
            .await
            .unwrap();
    let types: Vec<&str> = letters.iter().map(|l| l.event_type.as_str()).collect();
    assert_eq!(types, ["post.created", "post.created"], "{letters:?}");
    assert!(letters.iter().any(|l| l.reason.contains("cannot decode")));
    assert!(
        letters
            .iter()
            .any(|l| l.reason.contains("refused by the test"))
    );
    assert_posts_dead_letters_on_bus(&app, 2).await;
    assert_eq!(post_titles(&app).await, ["healthy"]);
    let status = projectors::operations::status(&app.pool).await.unwrap();
    let posts = status.iter().find(|s| s.name == "posts").unwrap();
    assert_eq!(posts.dead_letters, 2);
    // Other projections took the same events without trouble.
    let authors = status.iter().find(|s| s.name == "authors").unwrap();
    assert_eq!(
        authors.dead_letters, 1,
        "only the undecodable one: {status:?}"
    );

    // The cause is fixed; a replay applies the refused event once, the other stays.
    sql(&app, "DROP TRIGGER refuse ON rm_posts.posts").await;
    let (_, cache) = projectors::open(&keel_tests::projections::config(&app))
        .await
        .unwrap();
    let replayed = projectors::operations::replay_dead_letters(
        &app.pool,
        &[events::read_model::Projection::Posts],
        &cache,
    )
    .await
    .unwrap();
    assert_eq!((replayed.applied, replayed.still_failing), (1, 1));
    assert_eq!(post_titles(&app).await, ["healthy", "poison"]);
    let again = projectors::operations::replay_dead_letters(
        &app.pool,
        &[events::read_model::Projection::Posts],
        &cache,
    )
    .await
    .unwrap();
    assert_eq!((again.applied, again.still_failing), (0, 1));
    assert_eq!(post_titles(&app).await, ["healthy", "poison"]);
    projectors.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn status_prints_one_line_per_projection() {
    let app = TestApp::spawn().await.unwrap();
    let projectors = Running::start(&app).await;
    app.register("Ada").await;
    caught_up(&app.pool, WITHIN).await;
    projectors.stop().await;
    let binary = keel_tests::api_process::binary_named("projectors");
    let output = std::process::Command::new(binary)
        .arg("status")
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "users position=1 head=1 lag=0 dead_letters=0",
            "authors position=1 head=1 lag=0 dead_letters=0",
            "posts position=1 head=1 lag=0 dead_letters=0",
            "dashboard position=1 head=1 lag=0 dead_letters=0",
        ]
    );
    let json = std::process::Command::new(keel_tests::api_process::binary_named("projectors"))
        .args(["status", "--json"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    let parsed: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(parsed[0]["name"], "users");
    assert_eq!(parsed[0]["lag"], 0);
    app.stop().await;
}

/// The log's events, in position order.
async fn logged(app: &TestApp) -> Vec<domain::recorded::RecordedEvent> {
    events::event_log::read_all(&app.pool, domain::ids::Position(0), 1000)
        .await
        .unwrap()
}

/// Applies `batch` to the live `projection` in one transaction, as the projector does.
async fn apply_directly(
    app: &TestApp,
    projection: events::read_model::Projection,
    batch: &[&domain::recorded::RecordedEvent],
) -> Vec<projectors::ledger::Outcome> {
    let mut tx = app.pool.begin().await.unwrap();
    let mut stale = Vec::new();
    let outcomes =
        projectors::ledger::apply(&mut tx, projection, projection.schema(), batch, &mut stale)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    outcomes
}

#[tokio::test]
async fn a_post_published_before_its_authors_registration_is_applied_still_counts() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    app.published_post(&token).await;
    let log = logged(&app).await;
    // Streams have no order between them: a crash can leave the registration to a later
    // redelivery while the post's events arrive first.
    let (user, post): (Vec<_>, Vec<_>) = log
        .iter()
        .partition(|e| e.stream_id.to_string().starts_with("user-"));
    let authors = events::read_model::Projection::Authors;
    apply_directly(&app, authors, &post).await;
    apply_directly(&app, authors, &user).await;
    let count: i32 = sqlx::query_scalar("SELECT post_count FROM rm_authors.authors WHERE id = $1")
        .bind(ada)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    assert_model_equals_rebuilt(&app, authors).await;
    app.stop().await;
}

#[tokio::test]
async fn an_event_whose_predecessors_were_not_applied_takes_them_from_the_log() {
    use projectors::ledger::Outcome;
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let post = app.published_post(&token).await;
    let log = logged(&app).await;
    let published = log
        .iter()
        .find(|e| e.event_type == "post.published")
        .unwrap();
    let created = log.iter().find(|e| e.event_type == "post.created").unwrap();
    let posts = events::read_model::Projection::Posts;
    // post.created (version 1) never arrived; post.published (version 2) did.
    assert_eq!(
        apply_directly(&app, posts, &[published]).await,
        [Outcome::Applied]
    );
    // When version 1 is redelivered later, it is a duplicate.
    assert_eq!(
        apply_directly(&app, posts, &[created]).await,
        [Outcome::Duplicate]
    );
    let (status, title): (String, String) =
        sqlx::query_as("SELECT status, title FROM rm_posts.posts WHERE id = $1")
            .bind(post)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), title.as_str()), ("published", "Hello"));
    assert_model_equals_rebuilt(&app, posts).await;
    app.stop().await;
}

#[tokio::test]
async fn two_replays_at_once_apply_a_dead_letter_once() {
    let app = TestApp::spawn().await.unwrap();
    // Every like on a post is refused until the trigger goes: the like is dead-lettered.
    sql(
        &app,
        "CREATE FUNCTION keel_test_refuse_likes() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             -- A batch may insert the post with its like already counted.
             IF TG_OP = 'INSERT' THEN
                 IF NEW.like_count > 0 THEN
                     RAISE EXCEPTION 'likes refused by the test';
                 END IF;
             ELSIF NEW.like_count > OLD.like_count THEN
                 RAISE EXCEPTION 'likes refused by the test';
             END IF;
             RETURN NEW;
         END $$",
    )
    .await;
    sql(
        &app,
        "CREATE TRIGGER refuse_likes BEFORE INSERT OR UPDATE ON rm_posts.posts
         FOR EACH ROW EXECUTE FUNCTION keel_test_refuse_likes()",
    )
    .await;
    let projectors = Running::start(&app).await;
    let (_, ada) = app.register("Ada").await;
    let (_, bob) = app.register("Bob").await;
    let post = app.published_post(&ada).await;
    let liked = app
        .request(Method::PUT, &format!("/api/posts/{post}/like"), &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(liked.status(), 200);
    caught_up(&app.pool, Duration::from_secs(60)).await;
    projectors.stop().await;
    let posts = events::read_model::Projection::Posts;
    let letters = projectors::operations::dead_letters(&app.pool, &[posts])
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");

    sql(&app, "DROP TRIGGER refuse_likes ON rm_posts.posts").await;
    let (_, cache) = projectors::open(&keel_tests::projections::config(&app))
        .await
        .unwrap();
    let only_posts = [posts];
    let (first, second) = tokio::join!(
        projectors::operations::replay_dead_letters(&app.pool, &only_posts, &cache),
        projectors::operations::replay_dead_letters(&app.pool, &only_posts, &cache),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.applied + second.applied, 1, "{first:?} {second:?}");
    assert_eq!(first.still_failing + second.still_failing, 0);
    let likes: i32 = sqlx::query_scalar("SELECT like_count FROM rm_posts.posts WHERE id = $1")
        .bind(post)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(likes, 1);
    app.stop().await;
}

/// Runs one statement of test setup (a trigger that refuses, a sequence) on the app's
/// database.
async fn sql(app: &TestApp, statement: &str) {
    sqlx::query(statement)
        .execute(&app.pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}
