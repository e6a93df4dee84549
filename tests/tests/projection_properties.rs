//! proptest: for random sequences of commands sent through the real API, the live read
//! models (built from JetStream) equal the models rebuilt from the Postgres log.

use std::time::Duration;

use keel_tests::TestApp;
use keel_tests::projections::{Running, assert_live_equals_rebuilt, caught_up};
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const USERS: usize = 3;
const POSTS: usize = 3;

/// One command; indices pick among the case's users and posts (refusals are fine: the
/// log holds only what was accepted, and that is what both models fold).
#[derive(Debug, Clone)]
enum Op {
    Rename(usize, u8),
    ChangeRoles(usize, bool),
    Deactivate(usize),
    Create(usize),
    Edit(usize, usize, u8),
    Publish(usize, usize),
    Delete(usize, usize),
    Comment(usize, usize),
    Like(usize, usize),
    Unlike(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS;
    let post = 0..POSTS;
    prop_oneof![
        1 => (user.clone(), any::<u8>()).prop_map(|(u, n)| Op::Rename(u, n)),
        1 => (user.clone(), any::<bool>()).prop_map(|(u, a)| Op::ChangeRoles(u, a)),
        1 => user.clone().prop_map(Op::Deactivate),
        3 => user.clone().prop_map(Op::Create),
        1 => (user.clone(), post.clone(), any::<u8>()).prop_map(|(u, p, n)| Op::Edit(u, p, n)),
        3 => (user.clone(), post.clone()).prop_map(|(u, p)| Op::Publish(u, p)),
        1 => (user.clone(), post.clone()).prop_map(|(u, p)| Op::Delete(u, p)),
        3 => (user.clone(), post.clone()).prop_map(|(u, p)| Op::Comment(u, p)),
        3 => (user.clone(), post.clone()).prop_map(|(u, p)| Op::Like(u, p)),
        1 => (user, post).prop_map(|(u, p)| Op::Unlike(u, p)),
    ]
}

async fn run(app: &TestApp, admin: &str, ops: Vec<Op>) {
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(app.register(&format!("Prop {i}")).await);
    }
    let mut posts: Vec<Uuid> = Vec::new();
    let post = |posts: &Vec<Uuid>, p: usize| posts.get(p % posts.len().max(1)).copied();
    for op in ops {
        let response = match op {
            Op::Rename(u, n) => {
                let (id, token) = &users[u];
                app.send(
                    Method::PATCH,
                    &format!("/api/users/{id}"),
                    token,
                    json!({"name": format!("Name {n}")}),
                )
                .await
            }
            Op::ChangeRoles(u, admin_role) => {
                let roles = if admin_role {
                    json!(["user", "admin"])
                } else {
                    json!(["user"])
                };
                app.send(
                    Method::PUT,
                    &format!("/api/users/{}/roles", users[u].0),
                    admin,
                    json!({ "roles": roles }),
                )
                .await
            }
            Op::Deactivate(u) => {
                let (id, token) = &users[u];
                app.request(Method::DELETE, &format!("/api/users/{id}"), token)
                    .send()
                    .await
                    .unwrap()
            }
            Op::Create(u) => {
                let response = app
                    .send(
                        Method::POST,
                        "/api/posts",
                        &users[u].1,
                        json!({"title": "Prop post", "body": "text"}),
                    )
                    .await;
                if response.status() == 201 {
                    let body: Value = response.json().await.unwrap();
                    posts.push(body["id"].as_str().unwrap().parse().unwrap());
                }
                continue;
            }
            Op::Edit(u, p, n) => {
                let Some(id) = post(&posts, p) else { continue };
                app.send(
                    Method::PATCH,
                    &format!("/api/posts/{id}"),
                    &users[u].1,
                    json!({"title": format!("Edited {n}")}),
                )
                .await
            }
            Op::Publish(u, p) | Op::Delete(u, p) | Op::Like(u, p) | Op::Unlike(u, p) => {
                let Some(id) = post(&posts, p) else { continue };
                let (method, path) = match op {
                    Op::Publish(..) => (Method::POST, format!("/api/posts/{id}/publish")),
                    Op::Delete(..) => (Method::DELETE, format!("/api/posts/{id}")),
                    Op::Like(..) => (Method::PUT, format!("/api/posts/{id}/like")),
                    _ => (Method::DELETE, format!("/api/posts/{id}/like")),
                };
                app.request(method, &path, &users[u].1)
                    .send()
                    .await
                    .unwrap()
            }
            Op::Comment(u, p) => {
                let Some(id) = post(&posts, p) else { continue };
                app.send(
                    Method::POST,
                    &format!("/api/posts/{id}/comments"),
                    &users[u].1,
                    json!({"body": "prop comment"}),
                )
                .await
            }
        };
        assert!(
            response.status().is_success() || response.status().is_client_error(),
            "{op:?}: {}",
            response.status()
        );
    }
}

#[test]
fn live_read_models_equal_models_rebuilt_from_the_log() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, projectors) = runtime.block_on(async {
        let app = TestApp::spawn().await.unwrap();
        let projectors = Running::start(&app).await;
        (app, projectors)
    });
    let admin = app.admin_token();
    proptest!(ProptestConfig::with_cases(12), |(ops in proptest::collection::vec(op(), 1..40))| {
        runtime.block_on(async {
            run(&app, &admin, ops).await;
            caught_up(&app.pool, Duration::from_secs(30)).await;
            assert_live_equals_rebuilt(&app).await;
        });
    });
    runtime.block_on(async {
        projectors.stop().await;
        app.stop().await;
    });
}
