//! The write side end to end: each command's response, events, ETag and Location, and
//! the admin reads of the log as CloudEvents.

use keel_tests::TestApp;
use reqwest::Method;
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON body")
}

#[tokio::test]
async fn registering_returns_201_with_the_event_location_and_etag() {
    let app = TestApp::spawn().await.unwrap();
    let id = uuid::Uuid::new_v4();
    let token = app.token(id, &["user"]);
    let response = app
        .send(
            Method::POST,
            "/api/users",
            &token,
            json!({"email": "ada@pii.test", "name": "  Ada  "}),
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"1\"");
    assert_eq!(response.headers()["location"], format!("/api/users/{id}"));
    assert!(response.headers().contains_key("x-request-id"));
    let body = json_of(response).await;
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["stream_id"], format!("user-{id}"));
    assert_eq!(body["version"], 1);
    assert_eq!(body["events"][0]["type"], "user.registered");
    assert_eq!(body["events"][0]["version"], 1);
    assert_eq!(body["position"], body["events"][0]["position"]);

    // What was recorded (the read model needs a projector; the log does not).
    let recorded = json_of(
        app.request(
            Method::GET,
            &format!("/api/streams/user-{id}/events"),
            &app.admin_token(),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(recorded.as_array().unwrap().len(), 1);
    assert_eq!(recorded[0]["streamversion"], 1);
    assert_eq!(
        recorded[0]["data"],
        json!({"id": id, "email": "ada@pii.test", "name": "Ada", "roles": ["user"]})
    );
    app.stop().await;
}

#[tokio::test]
async fn a_command_that_changes_nothing_returns_no_events_and_the_streams_position() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    let path = format!("/api/users/{id}");
    let renamed = json_of(
        app.send(Method::PATCH, &path, &token, json!({"name": "Ada L."}))
            .await,
    )
    .await;
    assert_eq!(renamed["events"][0]["type"], "user.updated");
    let again = app
        .send(Method::PATCH, &path, &token, json!({"name": "Ada L."}))
        .await;
    assert_eq!(again.status(), 200);
    let again = json_of(again).await;
    assert_eq!(again["events"], json!([]));
    assert_eq!(again["version"], 2);
    assert_eq!(again["position"], renamed["position"]);
    app.stop().await;
}

#[tokio::test]
async fn the_blog_flow_appends_each_event_type() {
    let app = TestApp::spawn().await.unwrap();
    let (_author, author_token) = app.register("Author").await;
    let (_reader, reader_token) = app.register("Reader").await;
    let post = app.published_post(&author_token).await;

    let comment = app
        .send(
            Method::POST,
            &format!("/api/posts/{post}/comments"),
            &reader_token,
            json!({"body": "Nice"}),
        )
        .await;
    assert_eq!(comment.status(), 201);
    assert_eq!(comment.headers()["location"], format!("/api/posts/{post}"));
    let comment = json_of(comment).await;
    assert_eq!(comment["events"][0]["type"], "comment.added");
    assert!(comment["comment_id"].is_string());

    let like_path = format!("/api/posts/{post}/like");
    let like = json_of(
        app.request(Method::PUT, &like_path, &reader_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(like["events"][0]["type"], "post.liked");
    let twice = json_of(
        app.request(Method::PUT, &like_path, &reader_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(twice["events"], json!([]));
    let unlike = json_of(
        app.request(Method::DELETE, &like_path, &reader_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(unlike["events"][0]["type"], "post.unliked");

    let edit = app
        .send(
            Method::PATCH,
            &format!("/api/posts/{post}"),
            &author_token,
            json!({"title": "Hello again"}),
        )
        .await;
    assert_eq!(json_of(edit).await["events"][0]["type"], "post.updated");
    let delete = app
        .request(Method::DELETE, &format!("/api/posts/{post}"), &author_token)
        .send()
        .await
        .unwrap();
    let delete = json_of(delete).await;
    assert_eq!(delete["events"][0]["type"], "post.deleted");
    assert_eq!(delete["version"], 7);
    app.stop().await;
}

#[tokio::test]
async fn drafts_are_invisible_to_others_and_conflicting_for_their_author() {
    let app = TestApp::spawn().await.unwrap();
    let (_author, author_token) = app.register("Author").await;
    let (_reader, reader_token) = app.register("Reader").await;
    let created = app
        .send(
            Method::POST,
            "/api/posts",
            &author_token,
            json!({"title": "Draft", "body": "Text"}),
        )
        .await;
    let post = json_of(created).await["id"].as_str().unwrap().to_owned();
    let comments = format!("/api/posts/{post}/comments");
    let by_reader = app
        .send(
            Method::POST,
            &comments,
            &reader_token,
            json!({"body": "Hi"}),
        )
        .await;
    assert_eq!(by_reader.status(), 404);
    let by_admin = app
        .request(
            Method::PUT,
            &format!("/api/posts/{post}/like"),
            &app.admin_token(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_admin.status(), 404);
    let by_author = app
        .send(
            Method::POST,
            &comments,
            &author_token,
            json!({"body": "Hi"}),
        )
        .await;
    assert_eq!(by_author.status(), 409);
    let publish = format!("/api/posts/{post}/publish");
    assert_eq!(
        app.request(Method::POST, &publish, &author_token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.request(Method::POST, &publish, &author_token)
            .send()
            .await
            .unwrap()
            .status(),
        409
    );
    app.stop().await;
}

#[tokio::test]
async fn a_deactivated_user_is_refused_every_command() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Leaving").await;
    let deactivate = app
        .request(Method::DELETE, &format!("/api/users/{id}"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json_of(deactivate).await["events"][0]["type"],
        "user.deactivated"
    );
    let before = app.event_count().await;
    assert_eq!(app.create_post_status(&token).await, 403);
    let rename = app
        .send(
            Method::PATCH,
            &format!("/api/users/{id}"),
            &token,
            json!({"name": "Back"}),
        )
        .await;
    assert_eq!(rename.status(), 403);
    assert_eq!(app.event_count().await, before);
    app.stop().await;
}

#[tokio::test]
async fn roles_are_changed_by_an_admin_only() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    let path = format!("/api/users/{id}/roles");
    let by_self = app
        .send(Method::PUT, &path, &token, json!({"roles": ["admin"]}))
        .await;
    assert_eq!(by_self.status(), 403);
    let by_admin = app
        .send(
            Method::PUT,
            &path,
            &app.admin_token(),
            json!({"roles": ["user", "admin"]}),
        )
        .await;
    assert_eq!(by_admin.status(), 200);
    let events = app
        .request(
            Method::GET,
            &format!("/api/streams/user-{id}/events"),
            &app.admin_token(),
        )
        .send()
        .await
        .unwrap();
    let events = json_of(events).await;
    assert_eq!(events[1]["type"], "user.role_changed");
    assert_eq!(
        events[1]["data"],
        json!({"id": id, "roles": ["user", "admin"], "previous_roles": ["user"]})
    );
    app.stop().await;
}

#[tokio::test]
async fn the_log_reads_are_cloudevents_in_order_and_admin_only() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    app.send(
        Method::PATCH,
        &format!("/api/users/{id}"),
        &token,
        json!({"name": "Ada L."}),
    )
    .await;
    let refused = app
        .request(Method::GET, "/api/events", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let response = app
        .request(
            Method::GET,
            "/api/events?after=0&limit=10",
            &app.admin_token(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/cloudevents-batch+json"
    );
    let log = json_of(response).await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    let first = &log[0];
    assert_eq!(first["specversion"], "1.0");
    assert_eq!(first["type"], "user.registered");
    assert_eq!(first["source"], "/keel/users");
    assert_eq!(first["subject"], format!("user-{id}"));
    assert_eq!(first["datacontenttype"], "application/json");
    assert_eq!(
        first["dataschema"],
        "urn:keel:schemas:events/user.registered.v1.json"
    );
    assert_eq!(first["streamversion"], 1);
    assert!(first["correlationid"].is_string() && first["causationid"].is_string());
    assert!(log[0]["position"].as_i64() < log[1]["position"].as_i64());
    let after_first = format!("/api/events?after={}", first["position"]);
    let rest = json_of(
        app.request(Method::GET, &after_first, &app.admin_token())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rest.as_array().unwrap().len(), 1);
    assert_eq!(rest[0]["type"], "user.updated");
    assert_eq!(
        rest[0]["data"],
        json!({"id": id, "email": "ada@pii.test", "name": "Ada L."})
    );
    app.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await.unwrap();
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "Postgres, NATS and Redis run in the test environment"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_undecodable_event_fails_only_the_commands_of_its_stream() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, ada_token) = app.register("Ada").await;
    let mut others = Vec::new();
    for i in 0..10 {
        others.push(app.register(&format!("Other {i}")).await);
    }
    // A newer binary's event, or a corrupted row, that this code cannot decode.
    sqlx::query(
        "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data, metadata)
         VALUES (gen_random_uuid(), $1, 2, 'user.renamed_by_the_future', 1, '{}', '{}')",
    )
    .bind(format!("user-{ada}"))
    .execute(&app.pool)
    .await
    .unwrap();
    let ada_path = format!("/api/users/{ada}");
    let poisoned = app.send(Method::PATCH, &ada_path, &ada_token, json!({"name": "A"}));
    let app_ref = &app;
    let healthy = others.iter().map(|(id, token)| {
        let path = format!("/api/users/{id}");
        async move {
            app_ref
                .send(Method::PATCH, &path, token, json!({"name": "B"}))
                .await
                .status()
        }
    });
    let (poisoned, healthy) = tokio::join!(poisoned, futures::future::join_all(healthy));
    assert_eq!(poisoned.status(), 500);
    let body = json_of(poisoned).await;
    assert_eq!(body["type"], "urn:keel:problem:internal", "{body}");
    assert!(healthy.iter().all(|s| *s == 200), "{healthy:?}");
    app.stop().await;
}
