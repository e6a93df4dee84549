//! Notifications end to end (PROMISES P10, P11, P17's WebSocket part): the relay turns
//! events into per-user notifications on Redis, and the hub delivers them to the sockets
//! of that user only, once each, in order, across reconnects.

use keel_tests::TestApp;
use keel_tests::notifications::{Connect, RunningRelay, connect};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_comment_reaches_the_post_author_over_websocket() {
    let app = TestApp::spawn().await.unwrap();
    let relay = RunningRelay::start(&app).await;
    let (author, author_token) = app.register("Ada Author").await;
    let (_reader, reader_token) = app.register("Rita Reader").await;
    let post = app.published_post(&author_token).await;
    let mut socket = connect(&app, Connect::header(&author_token)).await;

    // The author's own comment notifies nobody; the reader's does.
    let own = app
        .send(
            Method::POST,
            &format!("/api/posts/{post}/comments"),
            &author_token,
            json!({"body": "mine"}),
        )
        .await;
    assert_eq!(own.status(), 201);
    let response = app
        .send(
            Method::POST,
            &format!("/api/posts/{post}/comments"),
            &reader_token,
            json!({"body": "Lovely post"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let comment: serde_json::Value = response.json().await.unwrap();

    let frame = socket.next().await;
    assert_eq!(frame["type"], "comment.added", "{frame}");
    assert_eq!(frame["data"]["post_id"], post.to_string());
    assert_eq!(frame["data"]["comment_id"], comment["comment_id"]);
    assert_eq!(frame["data"]["by"]["name"], "Rita Reader");
    assert_eq!(frame["data"]["excerpt"], "Lovely post");
    assert!(
        frame["offset"].as_str().is_some_and(|o| !o.is_empty()),
        "{frame}"
    );
    for field in ["id", "time", "event_id"] {
        assert!(frame[field].is_string(), "{field} missing: {frame}");
    }

    let liked = app
        .request(
            Method::PUT,
            &format!("/api/posts/{post}/like"),
            &reader_token,
        )
        .send()
        .await
        .unwrap();
    assert!(liked.status().is_success(), "{}", liked.status());
    let frame = socket.next().await;
    assert_eq!(frame["type"], "post.liked", "{frame}");
    assert_eq!(frame["data"]["by"]["name"], "Rita Reader");

    relay.stop().await;
    app.stop().await;
}
