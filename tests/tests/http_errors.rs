//! Every error status of the contract, produced by a real request, with an RFC 9457
//! problem body; and the nasty inputs, none of which may reach Postgres as a 500.

use keel_tests::test_app::test_config;
use keel_tests::{JwksServer, TestApp, problem};
use reqwest::{Method, Response};
use serde_json::{Value, json};

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn raw(
    app: &TestApp,
    token: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> Response {
    app.request(Method::POST, "/api/posts", token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn status_401_without_a_token() {
    let app = TestApp::spawn().await.unwrap();
    let response = app
        .client
        .post(app.url("/api/posts"))
        .json(&json!({"title": "t", "body": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    problem(response, 401).await;
    app.stop().await;
}

#[tokio::test]
async fn status_403_on_another_users_profile() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, _) = app.register("Ada").await;
    let (_, bob_token) = app.register("Bob").await;
    let response = app
        .send(
            Method::PATCH,
            &format!("/api/users/{ada}"),
            &bob_token,
            json!({"name": "X"}),
        )
        .await;
    problem(response, 403).await;
    let read = app
        .request(Method::GET, &format!("/api/users/{ada}"), &bob_token)
        .send()
        .await
        .unwrap();
    problem(read, 403).await;
    app.stop().await;
}

#[tokio::test]
async fn status_404_for_unknown_ids_malformed_ids_and_routes() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let unknown = uuid::Uuid::new_v4();
    for path in [
        format!("/api/posts/{unknown}/publish"),
        "/api/posts/not-a-uuid/publish".to_owned(),
        "/api/nothing-here".to_owned(),
    ] {
        let response = app
            .request(Method::POST, &path, &token)
            .send()
            .await
            .unwrap();
        problem(response, 404).await;
    }
    let admin = app.admin_token();
    let missing_user = app
        .request(Method::GET, &format!("/api/users/{unknown}"), &admin)
        .send()
        .await
        .unwrap();
    problem(missing_user, 404).await;
    let bad_stream = app
        .request(Method::GET, "/api/streams/order-1/events", &admin)
        .send()
        .await
        .unwrap();
    problem(bad_stream, 404).await;
    app.stop().await;
}

#[tokio::test]
async fn status_405_is_a_problem_too() {
    let app = TestApp::spawn().await.unwrap();
    let response = app
        .request(Method::PUT, "/api/posts", &app.admin_token())
        .send()
        .await
        .unwrap();
    problem(response, 405).await;
    app.stop().await;
}

#[tokio::test]
async fn status_409_when_registering_twice() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    let _ = id;
    let again = app
        .send(
            Method::POST,
            "/api/users",
            &token,
            json!({"email": "a@pii.test", "name": "A"}),
        )
        .await;
    problem(again, 409).await;
    app.stop().await;
}

#[tokio::test]
async fn status_412_names_the_current_version() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    let response = app
        .request(Method::PATCH, &format!("/api/users/{id}"), &token)
        .header("if-match", "\"7\"")
        .json(&json!({"name": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["etag"], "\"1\"");
    let body = problem(response, 412).await;
    assert_eq!(body["current_version"], 1);
    assert!(body["detail"].as_str().unwrap().contains('1'));
    app.stop().await;
}

#[tokio::test]
async fn status_413_for_a_10_mb_body() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let huge = format!(
        "{{\"title\": \"t\", \"body\": \"{}\"}}",
        "x".repeat(10 * 1024 * 1024)
    );
    problem(raw(&app, &token, "application/json", huge).await, 413).await;
    let just_over = format!(
        "{{\"title\": \"t\", \"body\": \"{}\"}}",
        "x".repeat(64 * 1024)
    );
    problem(raw(&app, &token, "application/json", just_over).await, 413).await;
    app.stop().await;
}

#[tokio::test]
async fn status_415_for_a_body_that_is_not_json() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    problem(raw(&app, &token, "text/plain", "title=t").await, 415).await;
    let missing = app
        .request(Method::POST, "/api/posts", &token)
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(missing, 415).await;
    app.stop().await;
}

#[tokio::test]
async fn status_422_names_every_invalid_field() {
    let app = TestApp::spawn().await.unwrap();
    let id = uuid::Uuid::new_v4();
    let token = app.token(id, &["user"]);
    let response = app
        .send(
            Method::POST,
            "/api/users",
            &token,
            json!({"email": "not-an-email", "name": "   "}),
        )
        .await;
    let body = problem(response, 422).await;
    assert_eq!(fields(&body), vec!["email", "name"]);
    let long = app
        .send(
            Method::POST,
            "/api/users",
            &token,
            json!({"email": "a@pii.test", "name": "x".repeat(101)}),
        )
        .await;
    assert_eq!(fields(&problem(long, 422).await), vec!["name"]);
    app.stop().await;
}

#[tokio::test]
async fn nasty_bodies_are_422_and_append_nothing() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = app.register("Ada").await;
    let before = app.event_count().await;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "NUL escape",
            r#"{"title": "a\u0000b", "body": "x"}"#.to_owned(),
            "title",
        ),
        (
            "lone surrogate",
            r#"{"title": "\ud800", "body": "x"}"#.to_owned(),
            "title",
        ),
        (
            "raw control character",
            "{\"title\": \"a\u{1}b\", \"body\": \"x\"}".to_owned(),
            "title",
        ),
        (
            "wrong type",
            r#"{"title": 5, "body": "x"}"#.to_owned(),
            "title",
        ),
        (
            "null required field",
            r#"{"title": null, "body": "x"}"#.to_owned(),
            "title",
        ),
        (
            "unknown field",
            r#"{"title": "t", "body": "x", "tags": []}"#.to_owned(),
            "tags",
        ),
        (
            "duplicate key",
            r#"{"title": "t", "title": "u", "body": "x"}"#.to_owned(),
            "$",
        ),
        (
            "deep nesting",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "$",
        ),
        (
            "deep nesting in a field",
            format!(
                r#"{{"title": {}{}, "body": "x"}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            ),
            "title",
        ),
        ("malformed", r#"{"title": "t", "body": "#.to_owned(), "body"),
        ("not an object", "[1, 2]".to_owned(), "$"),
        ("empty", String::new(), "$"),
        (
            "trailing data",
            r#"{"title": "t", "body": "x"} {}"#.to_owned(),
            "$",
        ),
        (
            "blank title",
            r#"{"title": "  ", "body": "x"}"#.to_owned(),
            "title",
        ),
        (
            "body too long",
            format!(r#"{{"title": "t", "body": "{}"}}"#, "x".repeat(20_001)),
            "body",
        ),
    ];
    for (case, body, field) in cases {
        let response = raw(&app, &token, "application/json", body).await;
        assert_eq!(response.status(), 422, "{case}");
        let body = problem(response, 422).await;
        assert_eq!(fields(&body), vec![field.to_owned()], "{case}: {body}");
    }
    assert_eq!(app.event_count().await, before, "nothing appended");
    app.stop().await;
}

#[tokio::test]
async fn bad_headers_and_queries_are_422() {
    let app = TestApp::spawn().await.unwrap();
    let (id, token) = app.register("Ada").await;
    let bad_if_match = app
        .request(Method::PATCH, &format!("/api/users/{id}"), &token)
        .header("if-match", "yesterday")
        .json(&json!({"name": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fields(&problem(bad_if_match, 422).await), vec!["If-Match"]);
    let bad_key = app
        .request(Method::PATCH, &format!("/api/users/{id}"), &token)
        .header("idempotency-key", "x".repeat(300))
        .json(&json!({"name": "B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        fields(&problem(bad_key, 422).await),
        vec!["Idempotency-Key"]
    );
    let bad_page = app
        .request(
            Method::GET,
            "/api/events?after=-1&limit=5000",
            &app.admin_token(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        fields(&problem(bad_page, 422).await),
        vec!["after", "limit"]
    );
    let bad_role = app
        .send(
            Method::PUT,
            &format!("/api/users/{id}/roles"),
            &app.admin_token(),
            json!({"roles": ["root"]}),
        )
        .await;
    assert_eq!(fields(&problem(bad_role, 422).await), vec!["roles[0]"]);
    app.stop().await;
}

#[tokio::test]
async fn status_503_names_the_dependency_that_is_down() {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(keel_tests::fresh_database().await.unwrap(), &jwks);
    // Nothing listens on port 1: NATS is "down" for this instance.
    config.connections.nats_url = "nats://127.0.0.1:1".to_owned();
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.headers()["retry-after"], "5");
    let body = problem(response, 503).await;
    assert!(body["detail"].as_str().unwrap().contains("nats"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_sane_client_request_id_is_echoed_and_an_unsafe_one_replaced() {
    let app = TestApp::spawn().await.unwrap();
    let kept = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123");
    let replaced = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "a b<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "a b<script>");
    app.stop().await;
}

/// Path ids are hyphenated UUIDs only: the braced, `urn:uuid:` and simple forms of an id
/// that exists name nothing.
#[tokio::test]
async fn ids_in_other_uuid_forms_are_404() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    let post = app.published_post(&token).await;
    let admin = app.admin_token();
    let forms = |id: uuid::Uuid| {
        [
            id.braced().to_string(),
            id.urn().to_string(),
            id.simple().to_string(),
        ]
    };
    let before = app.event_count().await;
    for form in forms(post) {
        for (method, path) in [
            (Method::GET, format!("/api/posts/{form}")),
            (Method::POST, format!("/api/posts/{form}/publish")),
            (Method::PUT, format!("/api/posts/{form}/like")),
            (Method::GET, format!("/api/streams/post-{form}/events")),
        ] {
            let response = app.request(method, &path, &admin).send().await.unwrap();
            let body = problem(response, 404).await;
            assert_eq!(body["type"], "urn:keel:problem:not-found", "{path}");
        }
    }
    for form in forms(ada) {
        for path in [format!("/api/users/{form}"), format!("/api/authors/{form}")] {
            let response = app
                .request(Method::GET, &path, &token)
                .send()
                .await
                .unwrap();
            problem(response, 404).await;
        }
    }
    let not_utf8 = app
        .request(Method::GET, "/api/posts/%FF", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem(not_utf8, 404).await["type"],
        "urn:keel:problem:not-found"
    );
    assert_eq!(app.event_count().await, before);
    let (status, _) = app
        .get(&format!("/api/streams/post-{post}/events"), &admin)
        .await;
    assert_eq!(status, 200, "the hyphenated form names it");
    app.stop().await;
}

/// A malformed `If-Match`, `Idempotency-Key` or `X-Min-Position` is 422 naming it on
/// every endpoint, commands included, and appends nothing; a position beyond the head
/// is 422 at once; a repeated query parameter is 422 naming it.
#[tokio::test]
async fn malformed_keel_headers_and_repeated_parameters_are_422_everywhere() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    let post = app.published_post(&token).await;
    let before = app.event_count().await;
    let bad = [
        ("if-match", "yesterday", "If-Match"),
        ("idempotency-key", "two words", "Idempotency-Key"),
        ("x-min-position", "-1", "X-Min-Position"),
        ("x-min-position", "12abc", "X-Min-Position"),
    ];
    let endpoints = [
        (
            Method::POST,
            "/api/posts".to_owned(),
            Some(json!({"title": "t", "body": "b"})),
        ),
        (Method::PUT, format!("/api/posts/{post}/like"), None),
        (
            Method::PATCH,
            format!("/api/users/{ada}"),
            Some(json!({"name": "B"})),
        ),
        (Method::GET, format!("/api/posts/{post}"), None),
        (Method::GET, "/api/posts".to_owned(), None),
        (Method::GET, "/api/me/dashboard".to_owned(), None),
        (Method::POST, "/api/ws-tickets".to_owned(), None),
    ];
    for (method, path, body) in &endpoints {
        for (name, value, field) in bad {
            let mut request = app
                .request(method.clone(), path, &token)
                .header(name, value);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = request.send().await.unwrap();
            let body = problem(response, 422).await;
            assert_eq!(
                fields(&body),
                vec![field],
                "{method} {path} with {name}: {value}"
            );
        }
    }
    assert_eq!(app.event_count().await, before, "nothing was appended");

    let head = app.head_position().await;
    let started = std::time::Instant::now();
    let beyond = app
        .request(Method::GET, &format!("/api/posts/{post}"), &token)
        .header("x-min-position", (head + 1000).to_string())
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "at once"
    );
    assert_eq!(fields(&problem(beyond, 422).await), vec!["X-Min-Position"]);

    for (path, token) in [
        ("/api/posts?limit=1&limit=2", token.clone()),
        ("/api/events?limit=1&limit=2", app.admin_token()),
    ] {
        let response = app.request(Method::GET, path, &token).send().await.unwrap();
        let body = problem(response, 422).await;
        assert_eq!(fields(&body), vec!["limit"], "{path}");
        assert_eq!(body["type"], "urn:keel:problem:validation");
    }
    app.stop().await;
}
