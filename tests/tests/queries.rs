//! The read side end to end: each query answers from its read model, which these tests
//! fill with SQL (as the projectors would), and `X-Min-Position` and the dashboard's
//! Redis cache (failing open) behave as the contract says. The internal API's keys and
//! listener: `internal.rs`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keel_tests::principals::Principal;
use keel_tests::redis_server::RedisServer;
use keel_tests::test_app::{SERVICE_SECRET, test_config};
use keel_tests::{JwksServer, TestApp, eventually, fresh_database, problem};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use uuid::Uuid;

// ---- seeding the read models -------------------------------------------------------

/// A row of the `users` table of `schema` (`rm_users` or `rm_dashboard`).
async fn user_row(app: &TestApp, schema: &str, id: Uuid, name: &str, roles: &[&str]) {
    sqlx::query(&format!(
        "INSERT INTO {schema}.users (id, email, name, roles, active, version)
         VALUES ($1, $2, $3, $4, true, 3)"
    ))
    .bind(id)
    .bind(format!("{}@pii.test", name.to_lowercase()))
    .bind(name)
    .bind(roles.iter().map(|r| (*r).to_owned()).collect::<Vec<_>>())
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn author_row(app: &TestApp, id: Uuid, name: &str) {
    sqlx::query(
        "INSERT INTO rm_authors.authors (id, name, active, post_count, version)
         VALUES ($1, $2, true, 2, 1)",
    )
    .bind(id)
    .bind(name)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn rename_author(app: &TestApp, id: Uuid, name: &str) {
    sqlx::query("UPDATE rm_authors.authors SET name = $2, version = version + 1 WHERE id = $1")
        .bind(id)
        .bind(name)
        .execute(&app.pool)
        .await
        .unwrap();
}

/// A post of the `posts` model; published ones get `published_at`.
async fn post_row(
    app: &TestApp,
    author: Uuid,
    title: &str,
    status: &str,
    published_at: Option<DateTime<Utc>>,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO rm_posts.posts (id, author_id, title, body, status, created_at,
                                     published_at, comment_count, like_count, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, 2, 4)",
    )
    .bind(id)
    .bind(author)
    .bind(title)
    .bind(format!("Body of {title}"))
    .bind(status)
    .bind(at(0))
    .bind(published_at)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

async fn comment_row(app: &TestApp, post: Uuid, author: Uuid, body: &str, position: i64) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO rm_posts.comments (id, post_id, author_id, body, created_at, position)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(post)
    .bind(author)
    .bind(body)
    .bind(at(position))
    .bind(position)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

/// Marks `stream` as applied through `version` by `projection` (as its projector would).
async fn applied(app: &TestApp, projection: &str, stream: &str, version: i64) {
    sqlx::query(&format!(
        "INSERT INTO rm_{projection}.applied (stream_id, version) VALUES ($1, $2)
         ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version"
    ))
    .bind(stream)
    .bind(version)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// A moment `minutes` after a fixed origin.
fn at(minutes: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_735_732_800 + minutes * 60, 0).unwrap()
}

// ---- reading -----------------------------------------------------------------------

async fn get(app: &TestApp, path: &str, token: &str) -> Response {
    app.request(Method::GET, path, token).send().await.unwrap()
}

async fn ok_json(response: Response) -> Value {
    assert_eq!(response.status(), 200, "status");
    response.json().await.unwrap()
}

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(items: &Value) -> Vec<Uuid> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// A test app on the given Redis.
async fn spawn_on_redis(redis_url: &str) -> TestApp {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.connections.redis_url = redis_url.to_owned();
    TestApp::spawn_with(config, jwks).await.unwrap()
}

// ---- users ---------------------------------------------------------------------------

#[tokio::test]
async fn a_user_reads_itself_and_an_admin_reads_anyone_from_the_users_model() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app, "rm_users", ada, "Ada", &["user"]).await;
    let expected = json!({"id": ada, "email": "ada@pii.test", "name": "Ada",
                          "roles": ["user"], "active": true, "version": 3});

    let own = get(
        &app,
        &format!("/api/users/{ada}"),
        &app.token(ada, &["user"]),
    )
    .await;
    assert_eq!(own.headers()["etag"], "\"3\"");
    assert_eq!(ok_json(own).await, expected);
    let by_admin = get(&app, &format!("/api/users/{ada}"), &app.admin_token()).await;
    assert_eq!(ok_json(by_admin).await, expected);
    app.stop().await;
}

#[tokio::test]
async fn reading_another_users_profile_is_forbidden_and_an_unknown_one_is_not_found() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app, "rm_users", ada, "Ada", &["user"]).await;
    let bob = app.token(Uuid::new_v4(), &["user"]);
    problem(get(&app, &format!("/api/users/{ada}"), &bob).await, 403).await;
    let unknown = Uuid::new_v4();
    let admin = app.admin_token();
    problem(
        get(&app, &format!("/api/users/{unknown}"), &admin).await,
        404,
    )
    .await;
    // Registered in the log but not projected yet: not in the model, so not found.
    let (carol, carol_token) = app.register("Carol").await;
    problem(
        get(&app, &format!("/api/users/{carol}"), &carol_token).await,
        404,
    )
    .await;
    app.stop().await;
}

// ---- authors and posts -------------------------------------------------------------------

#[tokio::test]
async fn queries_need_a_token() {
    let app = TestApp::spawn().await.unwrap();
    let id = Uuid::new_v4();
    for path in [
        format!("/api/users/{id}"),
        format!("/api/authors/{id}"),
        "/api/posts".to_owned(),
        format!("/api/posts/{id}"),
        "/api/me/dashboard".to_owned(),
    ] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        problem(response, 401).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn an_author_is_read_by_anyone_authenticated_and_an_unknown_one_is_not_found() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    author_row(&app, ada, "Ada").await;
    let reader = app.token(Uuid::new_v4(), &["user"]);
    let author = ok_json(get(&app, &format!("/api/authors/{ada}"), &reader).await).await;
    assert_eq!(
        author,
        json!({"id": ada, "name": "Ada", "active": true, "post_count": 2})
    );
    let unknown = Uuid::new_v4();
    problem(
        get(&app, &format!("/api/authors/{unknown}"), &reader).await,
        404,
    )
    .await;
    problem(get(&app, "/api/authors/not-a-uuid", &reader).await, 404).await;
    app.stop().await;
}

/// Every page of `GET /api/posts?<query>` with `limit`, following `next_cursor`.
async fn all_pages(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<Vec<Uuid>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/posts?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = ok_json(get(app, &path, token).await).await;
        let items = ids(&page["items"]);
        assert!(items.len() <= limit, "{page}");
        pages.push(items);
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert!(
                    next.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "a URL-safe cursor: {next}"
                );
                cursor = Some(next.to_owned());
            }
            None => {
                assert!(page["next_cursor"].is_null());
                return pages;
            }
        }
        assert!(pages.len() < 100, "the pages end");
    }
}

#[tokio::test]
async fn published_posts_are_listed_newest_first_across_pages_with_ties_broken_by_id() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    author_row(&app, ada, "Ada").await;
    let mut published = Vec::new();
    for (author, minute) in [
        (ada, 1),
        (bob, 5),
        (ada, 5),
        (ada, 5),
        (bob, 3),
        (ada, 3),
        (bob, 9),
    ] {
        let id = post_row(&app, author, "Post", "published", Some(at(minute))).await;
        published.push((at(minute), id));
    }
    post_row(&app, ada, "Draft", "draft", None).await;
    post_row(&app, bob, "Gone", "deleted", Some(at(20))).await;
    published.sort_by(|a, b| b.cmp(a));
    let expected: Vec<Uuid> = published.iter().map(|(_, id)| *id).collect();

    let reader = app.token(Uuid::new_v4(), &["user"]);
    let pages = all_pages(&app, &reader, "", 2).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 2, 1]
    );
    assert_eq!(pages.concat(), expected);

    let first = ok_json(get(&app, "/api/posts?limit=1", &reader).await).await;
    let newest = &first["items"][0];
    assert_eq!(
        newest["author"],
        json!({"id": bob, "name": ""}),
        "not projected yet"
    );
    assert_eq!(newest["title"], "Post");
    assert_eq!(newest["comment_count"], 1);
    assert_eq!(newest["like_count"], 2);
    let published_at: DateTime<Utc> = newest["published_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(published_at, at(9));
    app.stop().await;
}

#[tokio::test]
async fn a_page_continues_where_the_last_ended_even_when_newer_posts_arrive() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    let mut older = Vec::new();
    for minute in 1..=4 {
        older.push(post_row(&app, ada, "Old", "published", Some(at(minute))).await);
    }
    older.reverse();
    let reader = app.token(Uuid::new_v4(), &["user"]);
    let first = ok_json(get(&app, "/api/posts?limit=2", &reader).await).await;
    assert_eq!(ids(&first["items"]), older[..2]);
    post_row(&app, ada, "New", "published", Some(at(60))).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = ok_json(
        get(
            &app,
            &format!("/api/posts?limit=2&cursor={cursor}"),
            &reader,
        )
        .await,
    )
    .await;
    assert_eq!(ids(&second["items"]), older[2..]);
    assert!(second["next_cursor"].is_null());
    app.stop().await;
}

#[tokio::test]
async fn the_default_page_holds_20_posts() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    for minute in 0..21 {
        post_row(&app, ada, "Post", "published", Some(at(minute))).await;
    }
    let reader = app.token(Uuid::new_v4(), &["user"]);
    let page = ok_json(get(&app, "/api/posts", &reader).await).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert!(page["next_cursor"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn the_post_list_filters_by_author() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    author_row(&app, ada, "Ada").await;
    author_row(&app, bob, "Bob").await;
    let mut adas = Vec::new();
    for minute in 1..=5 {
        adas.push(post_row(&app, ada, "Ada's", "published", Some(at(minute))).await);
        post_row(&app, bob, "Bob's", "published", Some(at(minute))).await;
    }
    post_row(&app, ada, "Ada's draft", "draft", None).await;
    adas.reverse();
    let reader = app.token(Uuid::new_v4(), &["user"]);
    let pages = all_pages(&app, &reader, &format!("&author_id={ada}"), 2).await;
    assert_eq!(pages.concat(), adas);
    let page = ok_json(get(&app, &format!("/api/posts?author_id={ada}"), &reader).await).await;
    for item in page["items"].as_array().unwrap() {
        assert_eq!(item["author"], json!({"id": ada, "name": "Ada"}));
    }
    let nobody = Uuid::new_v4();
    let empty = ok_json(get(&app, &format!("/api/posts?author_id={nobody}"), &reader).await).await;
    assert_eq!(empty, json!({"items": [], "next_cursor": null}));
    app.stop().await;
}

#[tokio::test]
async fn a_bad_limit_cursor_or_author_id_is_422_naming_the_parameter() {
    let app = TestApp::spawn().await.unwrap();
    let reader = app.token(Uuid::new_v4(), &["user"]);
    for (query, named) in [
        ("limit=0", vec!["limit"]),
        ("limit=101", vec!["limit"]),
        ("limit=ten", vec!["limit"]),
        ("limit=-1", vec!["limit"]),
        ("cursor=not*a*cursor", vec!["cursor"]),
        ("cursor=bm90LWEtY3Vyc29y", vec!["cursor"]),
        ("author_id=ada", vec!["author_id"]),
        (
            "author_id=x&limit=1000&cursor=%21",
            vec!["author_id", "limit", "cursor"],
        ),
    ] {
        let body = problem(
            get(&app, &format!("/api/posts?{query}"), &reader).await,
            422,
        )
        .await;
        assert_eq!(fields(&body), named, "{query}");
    }
    ok_json(get(&app, "/api/posts?limit=100", &reader).await).await;
    ok_json(get(&app, "/api/posts?limit=1", &reader).await).await;
    app.stop().await;
}

#[tokio::test]
async fn a_draft_is_visible_to_its_author_only() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    author_row(&app, ada, "Ada").await;
    let draft = post_row(&app, ada, "Draft", "draft", None).await;
    let path = format!("/api/posts/{draft}");
    let own = ok_json(get(&app, &path, &app.token(ada, &["user"])).await).await;
    assert_eq!(own["status"], "draft");
    assert_eq!(own["title"], "Draft");
    let other = app.token(Uuid::new_v4(), &["user"]);
    problem(get(&app, &path, &other).await, 404).await;
    problem(get(&app, &path, &app.admin_token()).await, 404).await;
    let list = ok_json(get(&app, "/api/posts", &other).await).await;
    assert_eq!(list["items"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_post_is_visible_to_its_author_only() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    let deleted = post_row(&app, ada, "Gone", "deleted", Some(at(1))).await;
    let path = format!("/api/posts/{deleted}");
    let own = ok_json(get(&app, &path, &app.token(ada, &["user"])).await).await;
    assert_eq!(own["status"], "deleted");
    problem(
        get(&app, &path, &app.token(Uuid::new_v4(), &["user"])).await,
        404,
    )
    .await;
    problem(get(&app, &path, &app.admin_token()).await, 404).await;
    let unknown = Uuid::new_v4();
    problem(
        get(&app, &format!("/api/posts/{unknown}"), &app.admin_token()).await,
        404,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_post_shows_its_comments_oldest_first_with_their_authors_names() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    author_row(&app, ada, "Ada").await;
    author_row(&app, bob, "Bob").await;
    let post = post_row(&app, ada, "Hello", "published", Some(at(1))).await;
    let third = comment_row(&app, post, bob, "third", 30).await;
    let first = comment_row(&app, post, carol, "first", 10).await;
    let second = comment_row(&app, post, ada, "second", 20).await;
    let elsewhere = post_row(&app, ada, "Other", "published", Some(at(2))).await;
    comment_row(&app, elsewhere, bob, "not here", 15).await;

    let reader = app.token(Uuid::new_v4(), &["user"]);
    let response = get(&app, &format!("/api/posts/{post}"), &reader).await;
    assert_eq!(response.headers()["etag"], "\"4\"");
    let body = ok_json(response).await;
    assert_eq!(
        body,
        json!({
            "id": post, "title": "Hello", "body": "Body of Hello", "status": "published",
            "author": {"id": ada, "name": "Ada"},
            "comments": [
                {"id": first, "author": {"id": carol, "name": ""}, "body": "first",
                 "created_at": body["comments"][0]["created_at"]},
                {"id": second, "author": {"id": ada, "name": "Ada"}, "body": "second",
                 "created_at": body["comments"][1]["created_at"]},
                {"id": third, "author": {"id": bob, "name": "Bob"}, "body": "third",
                 "created_at": body["comments"][2]["created_at"]},
            ],
            "like_count": 2, "version": 4,
        })
    );
    let created_at: DateTime<Utc> = body["comments"][0]["created_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(created_at, at(10));
    app.stop().await;
}

#[tokio::test]
async fn a_renamed_author_shows_the_new_name_on_posts_and_comments() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    author_row(&app, ada, "Ada").await;
    author_row(&app, bob, "Bob").await;
    let post = post_row(&app, ada, "Hello", "published", Some(at(1))).await;
    comment_row(&app, post, ada, "mine", 1).await;
    comment_row(&app, post, bob, "theirs", 2).await;
    rename_author(&app, ada, "Ada Lovelace").await;

    let reader = app.token(Uuid::new_v4(), &["user"]);
    let list = ok_json(get(&app, "/api/posts", &reader).await).await;
    assert_eq!(list["items"][0]["author"]["name"], "Ada Lovelace");
    let detail = ok_json(get(&app, &format!("/api/posts/{post}"), &reader).await).await;
    assert_eq!(detail["author"]["name"], "Ada Lovelace");
    assert_eq!(detail["comments"][0]["author"]["name"], "Ada Lovelace");
    assert_eq!(detail["comments"][1]["author"]["name"], "Bob");
    let author = ok_json(get(&app, &format!("/api/authors/{ada}"), &reader).await).await;
    assert_eq!(author["name"], "Ada Lovelace");
    app.stop().await;
}

// ---- the dashboard ------------------------------------------------------------------------

/// Ada's dashboard model: a draft, two published posts and a deleted one (with likes that
/// do not count), and twelve comments by Bob on her published posts.
async fn seed_dashboard(app: &TestApp, ada: Uuid, bob: Uuid) -> (Uuid, [Uuid; 2], Vec<Uuid>) {
    user_row(app, "rm_dashboard", ada, "Ada", &["user"]).await;
    user_row(app, "rm_dashboard", bob, "Bob", &["user"]).await;
    let mut ids = Vec::new();
    for (position, title, status, likes) in [
        (1, "Draft", "draft", 0),
        (2, "First", "published", 3),
        (3, "Second", "published", 4),
        (4, "Deleted", "deleted", 10),
    ] {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO rm_dashboard.posts (id, author_id, title, status, like_count, position)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id)
        .bind(ada)
        .bind(title)
        .bind(status)
        .bind(likes)
        .bind(position)
        .execute(&app.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    let mut comments = Vec::new();
    for position in 10..22_i64 {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO rm_dashboard.comments
                 (id, recipient, post_id, author_id, body, created_at, position)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(ada)
        .bind(ids[1 + (position as usize % 2)])
        .bind(bob)
        .bind(format!("comment {position}"))
        .bind(at(position))
        .bind(position)
        .execute(&app.pool)
        .await
        .unwrap();
        comments.push(id);
    }
    comments.reverse();
    (ids[0], [ids[2], ids[1]], comments)
}

async fn dashboard(app: &TestApp, token: &str, min_position: Option<i64>) -> (String, Value) {
    let mut request = app.request(Method::GET, "/api/me/dashboard", token);
    if let Some(position) = min_position {
        request = request.header("x-min-position", position.to_string());
    }
    let response = request.send().await.unwrap();
    let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    (cache, ok_json(response).await)
}

fn dashboard_key(app: &TestApp, user: Uuid) -> String {
    events::read_model::dashboard_key(&app.stream, domain::ids::UserId(user))
}

#[tokio::test]
async fn the_dashboard_is_the_callers_model_newest_first() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let (draft, published, comments) = seed_dashboard(&app, ada, bob).await;
    let (_, body) = dashboard(&app, &app.token(ada, &["user"]), None).await;
    assert_eq!(
        body["user"],
        json!({"id": ada, "email": "ada@pii.test", "name": "Ada", "roles": ["user"],
               "active": true, "version": 3})
    );
    assert_eq!(body["drafts"], json!([{"id": draft, "title": "Draft"}]));
    assert_eq!(
        body["published"],
        json!([{"id": published[0], "title": "Second"}, {"id": published[1], "title": "First"}])
    );
    assert_eq!(body["likes_received"], 7);
    assert_eq!(ids(&body["recent_comments"]), comments[..10]);
    let newest = &body["recent_comments"][0];
    assert_eq!(newest["author"], json!({"id": bob, "name": "Bob"}));
    assert_eq!(newest["body"], "comment 21");
    assert_eq!(newest["post_id"], json!(published[0]));

    let (_, bobs) = dashboard(&app, &app.token(bob, &["user"]), None).await;
    assert_eq!(bobs["user"]["id"], json!(bob));
    assert_eq!(bobs["recent_comments"], json!([]));
    assert_eq!(bobs["likes_received"], 0);
    let stranger = app.token(Uuid::new_v4(), &["user", "admin"]);
    let missing = app
        .request(Method::GET, "/api/me/dashboard", &stranger)
        .send()
        .await
        .unwrap();
    problem(missing, 404).await;
    app.stop().await;
}

#[tokio::test]
async fn the_dashboard_is_a_miss_then_a_hit_and_a_miss_again_once_its_key_is_deleted() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    seed_dashboard(&app, ada, bob).await;
    let token = app.token(ada, &["user"]);
    let (cache, first) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "miss");
    assert_eq!(first["user"]["name"], "Ada");

    // The model changes; the cached copy is served until it is dropped.
    sqlx::query("UPDATE rm_dashboard.users SET name = 'Ada L.' WHERE id = $1")
        .bind(ada)
        .execute(&app.pool)
        .await
        .unwrap();
    let (cache, second) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "hit");
    assert_eq!(second, first);

    let key = dashboard_key(&app, ada);
    let client = redis::Client::open(app.redis_admin_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let stored: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["position"], 0);
    assert_eq!(stored["body"], first);
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 30, "ttl {ttl}");

    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (cache, third) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "miss");
    assert_eq!(third["user"]["name"], "Ada L.");
    let (cache, _) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "hit");
    app.stop().await;
}

#[tokio::test]
async fn a_cached_dashboard_older_than_x_min_position_is_a_miss() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    let bob = Uuid::new_v4();
    seed_dashboard(&app, ada, bob).await;
    let (cache, _) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "miss");
    let (cache, _) = dashboard(&app, &token, Some(0)).await;
    assert_eq!(cache, "hit");

    // Ada's registration is in the log; once the model has applied it, a client that
    // saw that position gets a fresh read, which then serves it from the cache.
    let position = app.head_position().await;
    applied(&app, "dashboard", &format!("user-{ada}"), 1).await;
    let (cache, _) = dashboard(&app, &token, Some(position)).await;
    assert_eq!(cache, "miss");
    let (cache, _) = dashboard(&app, &token, Some(position)).await;
    assert_eq!(cache, "hit");
    let (cache, _) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "hit");
    app.stop().await;
}

#[tokio::test]
async fn with_redis_down_the_dashboard_comes_from_postgres_and_hits_resume_when_it_is_back() {
    let mut redis = RedisServer::start().await.unwrap();
    let app = spawn_on_redis(&redis.url_for(Principal::CommandApi)).await;
    let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
    seed_dashboard(&app, ada, bob).await;
    let token = app.token(ada, &["user"]);
    let (cache, expected) = dashboard(&app, &token, None).await;
    assert_eq!(cache, "miss");
    assert_eq!(dashboard(&app, &token, None).await.0, "hit");

    redis.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let (cache, body) = dashboard(&app, &token, None).await;
        assert_eq!(cache, "bypass");
        assert_eq!(body, expected);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    redis.start_again().await.unwrap();
    let (app_ref, token_ref) = (&app, &token);
    eventually(
        Duration::from_secs(10),
        "the cache serves again",
        || async move {
            match dashboard(app_ref, token_ref, None).await.0.as_str() {
                "hit" => Ok(()),
                other => Err(other.to_owned()),
            }
        },
    )
    .await;
    app.stop().await;
}

// ---- X-Min-Position ---------------------------------------------------------------------------

#[tokio::test]
async fn x_min_position_beyond_the_users_model_is_503_with_retry_after_within_the_bound() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    user_row(&app, "rm_users", ada, "Ada", &["user"]).await;
    let position = app.head_position().await;
    let path = format!("/api/users/{ada}");

    let started = Instant::now();
    let response = app
        .request(Method::GET, &path, &token)
        .header("x-min-position", position.to_string())
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(response.headers().contains_key("retry-after"));
    let body = problem(response, 503).await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&position.to_string())
    );
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(7),
        "waited {waited:?}"
    );

    applied(&app, "users", &format!("user-{ada}"), 1).await;
    let response = app
        .request(Method::GET, &path, &token)
        .header("x-min-position", position.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(response).await["name"], "Ada");
    app.stop().await;
}

#[tokio::test]
async fn x_min_position_waits_until_the_model_has_applied_it() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    let position = app.head_position().await;
    let request = app
        .request(Method::GET, &format!("/api/users/{ada}"), &token)
        .header("x-min-position", position.to_string())
        .send();
    let projector = async {
        user_row(&app, "rm_users", ada, "Ada", &["user"]).await;
        applied(&app, "users", &format!("user-{ada}"), 1).await;
    };
    let (response, ()) = tokio::join!(request, projector);
    assert_eq!(ok_json(response.unwrap()).await["id"], json!(ada));
    app.stop().await;
}

#[tokio::test]
async fn the_posts_queries_wait_for_both_the_posts_and_the_authors_models() {
    let app = TestApp::spawn().await.unwrap();
    let (ada, token) = app.register("Ada").await;
    let post = app.published_post(&token).await;
    let position = app.head_position().await;
    author_row(&app, ada, "Ada").await;
    sqlx::query(
        "INSERT INTO rm_posts.posts (id, author_id, title, body, status, created_at,
                                     published_at, version)
         VALUES ($1, $2, 'Hello', 'World', 'published', now(), now(), 2)",
    )
    .bind(post)
    .bind(ada)
    .execute(&app.pool)
    .await
    .unwrap();
    applied(&app, "posts", &format!("post-{post}"), 2).await;
    let with_position = |path: &str| {
        app.request(Method::GET, path, &token)
            .header("x-min-position", position.to_string())
            .send()
    };
    let detail = format!("/api/posts/{post}");
    // The authors model has not applied Ada's registration nor her post yet.
    let (list, one) = tokio::join!(with_position("/api/posts"), with_position(&detail));
    problem(list.unwrap(), 503).await;
    problem(one.unwrap(), 503).await;

    applied(&app, "authors", &format!("user-{ada}"), 1).await;
    applied(&app, "authors", &format!("post-{post}"), 2).await;
    let list = ok_json(with_position("/api/posts").await.unwrap()).await;
    assert_eq!(ids(&list["items"]), vec![post]);
    let one = ok_json(with_position(&detail).await.unwrap()).await;
    assert_eq!(one["author"]["name"], "Ada");
    let author = app
        .request(Method::GET, &format!("/api/authors/{ada}"), &token)
        .header("x-min-position", position.to_string())
        .send()
        .await
        .unwrap();
    ok_json(author).await;
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_x_min_position_is_422() {
    let app = TestApp::spawn().await.unwrap();
    let ada = Uuid::new_v4();
    user_row(&app, "rm_users", ada, "Ada", &["user"]).await;
    let token = app.token(ada, &["user"]);
    for path in [
        format!("/api/users/{ada}"),
        format!("/api/authors/{ada}"),
        "/api/posts".to_owned(),
        "/api/me/dashboard".to_owned(),
    ] {
        for value in ["-1", "abc", "1.5", "", "+3", "99999999999999999999"] {
            let response = app
                .request(Method::GET, &path, &token)
                .header("x-min-position", value)
                .send()
                .await
                .unwrap();
            let body = problem(response, 422).await;
            assert_eq!(fields(&body), vec!["X-Min-Position"], "{path} {value:?}");
        }
    }
    let internal = app
        .client
        .get(app.internal(&format!("/internal/users/{ada}")))
        .header("x-api-key", SERVICE_SECRET)
        .header("x-min-position", "later")
        .send()
        .await
        .unwrap();
    problem(internal, 422).await;
    let satisfied = app
        .request(Method::GET, &format!("/api/users/{ada}"), &token)
        .header("x-min-position", "0")
        .send()
        .await
        .unwrap();
    ok_json(satisfied).await;
    app.stop().await;
}
