//! Optimistic concurrency and idempotency under real concurrency (PROMISES P13, P14).

use futures::future::join_all;
use keel_tests::TestApp;
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn of_16_concurrent_writers_with_the_same_if_match_exactly_one_wins() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    let path = format!("/api/users/{id}");
    let attempts = (0..16).map(|i| {
        app.request(Method::PATCH, &path, &token)
            .header("if-match", "\"1\"")
            .json(&json!({"name": format!("Name {i}")}))
            .send()
    });
    let statuses: Vec<u16> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        15,
        "{statuses:?}"
    );
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM events WHERE stream_id = $1 ORDER BY version")
            .bind(format!("user-{id}"))
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1, 2], "versions are contiguous");
    app.stop().await;
}

#[tokio::test]
async fn of_100_concurrent_edits_of_a_post_with_the_same_if_match_one_wins() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Author").await;
    let post = app.published_post(&token).await;
    let path = format!("/api/posts/{post}");
    let attempts = (0..100).map(|i| {
        app.request(Method::PATCH, &path, &token)
            .header("if-match", "\"2\"")
            .json(&json!({"body": format!("version {i}")}))
            .send()
    });
    let statuses: Vec<u16> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 99);
    app.stop().await;
}

async fn keyed(app: &TestApp, token: &str, key: &str, body: Value) -> (u16, Option<String>, Value) {
    let response = app
        .request(Method::POST, "/api/posts", token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}

#[tokio::test]
async fn a_replayed_key_returns_the_first_response_and_appends_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let body = json!({"title": "Once", "body": "Only once"});
    let (status, replayed, first) = keyed(&app, &token, "key-1", body.clone()).await;
    assert_eq!((status, replayed), (201, None));
    let count = app.event_count().await;
    let (status, replayed, again) = keyed(&app, &token, "key-1", body).await;
    assert_eq!((status, replayed.as_deref()), (201, Some("true")));
    assert_eq!(again, first);
    assert_eq!(app.event_count().await, count);

    let (status, _, problem) = keyed(
        &app,
        &token,
        "key-1",
        json!({"title": "Other", "body": "x"}),
    )
    .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, count);
    app.stop().await;
}

#[tokio::test]
async fn the_same_key_of_another_principal_is_independent() {
    let app = TestApp::spawn().await.unwrap();
    let (_, ada) = app.register("Ada").await;
    let (_, bob) = app.register("Bob").await;
    let body = json!({"title": "Mine", "body": "x"});
    let (_, _, by_ada) = keyed(&app, &ada, "shared-key", body.clone()).await;
    let (status, replayed, by_bob) = keyed(&app, &bob, "shared-key", body).await;
    assert_eq!((status, replayed), (201, None));
    assert_ne!(by_ada["id"], by_bob["id"]);
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_replays_of_one_key_append_one_event_set() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let before = app.event_count().await;
    let body = json!({"title": "Race", "body": "x"});
    let results = join_all((0..50).map(|_| keyed(&app, &token, "race-key", body.clone()))).await;
    assert_eq!(app.event_count().await, before + 1, "one post.created");
    let first = &results[0].2;
    for (status, _, response) in &results {
        assert_eq!(*status, 201);
        assert_eq!(response, first, "identical responses");
    }
    assert_eq!(
        results
            .iter()
            .filter(|(_, replayed, _)| replayed.is_none())
            .count(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn two_instances_on_one_log_keep_versions_contiguous_and_if_match_exact() {
    let first = TestApp::spawn().await.unwrap();
    let jwks = keel_tests::JwksServer::start().await.unwrap();
    let mut config = keel_tests::test_app::test_config(first.database_url.clone(), &jwks);
    config.connections.stream = first.stream.clone();
    let second = TestApp::spawn_with(config, jwks).await.unwrap();
    let (id, token) = first.register("Ada").await;
    let path = format!("/api/users/{id}");

    // Each instance's cached state must see what the other appended.
    let renamed = second
        .send(Method::PATCH, &path, &token, json!({"name": "By second"}))
        .await;
    assert_eq!(renamed.status(), 200);
    let stale = first
        .request(Method::PATCH, &path, &token)
        .header("if-match", "\"1\"")
        .json(&json!({"name": "Stale"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        stale.status(),
        412,
        "the first instance saw the second's append"
    );

    let writes = (0..40).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.send(
            Method::PATCH,
            &path,
            &token,
            json!({"name": format!("Name {i}")}),
        )
    });
    let statuses: Vec<u16> = join_all(writes)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let races = (0..10).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        app.request(Method::PATCH, &path, &token)
            .header("if-match", "\"42\"")
            .json(&json!({"name": format!("Race {i}")}))
            .send()
    });
    let statuses: Vec<u16> = join_all(races)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM events WHERE stream_id = $1 ORDER BY position")
            .bind(format!("user-{id}"))
            .fetch_all(&first.pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        (1..=43).collect::<Vec<i64>>(),
        "one event per version, in log order"
    );
    second.stop().await;
    first.stop().await;
}

#[tokio::test]
async fn a_key_older_than_24_hours_starts_afresh() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let body = json!({"title": "Daily", "body": "x"});
    let (_, _, first) = keyed(&app, &token, "daily-key", body.clone()).await;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let count = app.event_count().await;
    let (status, replayed, second) = keyed(&app, &token, "daily-key", body.clone()).await;
    assert_eq!(
        (status, replayed),
        (201, None),
        "an expired key is not replayed"
    );
    assert_ne!(second["id"], first["id"]);
    assert_eq!(app.event_count().await, count + 1);
    let (_, replayed, third) = keyed(&app, &token, "daily-key", body).await;
    assert_eq!(replayed.as_deref(), Some("true"), "the renewed key replays");
    assert_eq!(third, second);
    app.stop().await;
}
