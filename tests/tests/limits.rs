//! Isolation and limits at the HTTP edge (PROMISES P23): rate limits per principal and
//! per client IP, the bound on requests in flight, on `X-Min-Position` waiters, and on
//! notification sockets per user and per instance. Each refusal is a problem with
//! `Retry-After`, comes before any handler, and appends nothing.

use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_tests::forge::b64;
use keel_tests::notifications::{Connect, Notifier, Socket, connect, try_connect};
use keel_tests::test_app::test_config;
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
use reqwest::{Method, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// A test app whose configuration `change` adjusted.
async fn spawn(change: impl FnOnce(&mut command_api::Config)) -> TestApp {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    change(&mut config);
    TestApp::spawn_with(config, jwks).await.unwrap()
}

fn rate(per_second: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(per_second).unwrap()
}

fn header(response: &Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{} lacks {name}", response.status()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts a refusal: its status, a problem body of `kind`, and `Retry-After`.
async fn refused(response: Response, status: u16, kind: &str) -> Value {
    assert_eq!(response.status(), status);
    assert!(header(&response, "retry-after").parse::<u32>().unwrap() >= 1);
    assert_eq!(
        header(&response, "content-type"),
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], format!("urn:keel:problem:{kind}"));
    assert_eq!(body["status"], status);
    body
}

/// P23: one principal sending 1,000 commands in about a second gets the burst and the
/// rate, the rest 429 with the draft headers; only accepted commands append; another
/// principal and `/healthz` are untouched meanwhile.
#[tokio::test]
async fn a_principal_past_its_rate_gets_429_and_appends_nothing() {
    const RATE: u32 = 50;
    let app = spawn(|config| config.rate_limit = rate(RATE)).await;
    let (_, abuser) = app.register("Abuser").await;
    let (_, neighbour) = app.register("Neighbour").await;
    let before = app.event_count().await;

    let started = Instant::now();
    let create = |_| {
        app.request(Method::POST, "/api/posts", &abuser)
            .json(&json!({"title": "t", "body": "b"}))
            .send()
    };
    let responses: Vec<Response> = futures::stream::iter(0..1000)
        .map(create)
        .buffer_unordered(32)
        .map(Result::unwrap)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();

    let mut accepted = 0;
    for response in responses {
        if response.status() == 201 {
            accepted += 1;
            assert!(header(&response, "ratelimit").starts_with("\"per-principal\";r="));
            continue;
        }
        assert_eq!(
            header(&response, "ratelimit-policy"),
            format!("\"per-principal\";q={};w=2", 2 * RATE)
        );
        assert!(header(&response, "ratelimit").starts_with("\"per-principal\";r=0;t="));
        refused(response, 429, "too-many-requests").await;
    }
    // The burst (less the neighbour's and the abuser's registrations), then the rate.
    let most = f64::from(2 * RATE) + f64::from(RATE) * elapsed + 1.0;
    assert!(
        f64::from(accepted) >= f64::from(2 * RATE) - 1.0 && f64::from(accepted) <= most,
        "{accepted} accepted in {elapsed:.2} s (burst {}, at most {most:.0})",
        2 * RATE
    );
    assert_eq!(app.event_count().await, before + i64::from(accepted));

    assert_eq!(app.create_post_status(&neighbour).await, 201);
    for _ in 0..50 {
        let health = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "/healthz is never limited");
    }
    app.stop().await;
}

/// Requests without a valid token are limited per client IP; a valid token from the
/// same address is not, and neither are the health endpoints.
#[tokio::test]
async fn requests_without_a_valid_token_are_limited_per_address() {
    const RATE: u32 = 5;
    let app = spawn(|config| config.ip_rate_limit = rate(RATE)).await;
    let token = app.token(Uuid::new_v4(), &["user"]);
    let started = Instant::now();
    let mut passed = 0;
    let mut limited = 0;
    for n in 0..60 {
        let request = app.client.get(app.url("/api/posts"));
        let request = if n % 2 == 0 {
            request
        } else {
            request.bearer_auth("not.a.token")
        };
        let response = request.send().await.unwrap();
        if response.status() == 401 {
            passed += 1;
        } else {
            assert_eq!(
                header(&response, "ratelimit-policy"),
                format!("\"per-ip\";q={};w=2", 2 * RATE)
            );
            refused(response, 429, "too-many-requests").await;
            limited += 1;
        }
    }
    let most = f64::from(2 * RATE) + f64::from(RATE) * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        f64::from(passed) <= most,
        "{passed} passed, at most {most:.0}"
    );
    assert!(limited > 0, "some requests were limited");
    let (status, _) = app.get("/api/posts", &token).await;
    assert_eq!(status, 200, "a valid token is limited as its principal");
    for url in [
        app.url("/healthz"),
        app.url("/readyz"),
        app.internal("/metrics"),
    ] {
        let response = app.client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url} is never rate limited");
    }
    app.stop().await;
}

/// A query that waits for a position no read model reaches (no projector runs here)
/// holds its place for the whole wait bound.
fn held_query(app: &TestApp, token: &str, user: Uuid, position: i64) -> reqwest::RequestBuilder {
    app.request(Method::GET, &format!("/api/users/{user}"), token)
        .header("x-min-position", position.to_string())
}

/// Asserts that a socket handshake with `token` is refused with `status` and problem type
/// `urn:keel:problem:<kind>`.
async fn socket_refused(app: &TestApp, token: &str, status: u16, kind: &str, what: &str) {
    let refused = try_connect(&app.base_url, Connect::header(token))
        .await
        .err()
        .unwrap_or_else(|| panic!("{what} is refused"));
    assert_eq!(refused.status, status, "{what}");
    assert_eq!(
        refused.body["type"],
        format!("urn:keel:problem:{kind}"),
        "{what}"
    );
}

/// Sends `n` queries at once that each hold their place for the whole wait bound, and
/// returns them as they finish, each with how long it took.
fn held_queries(
    app: &TestApp,
    token: &str,
    user: Uuid,
    position: i64,
    n: usize,
) -> impl futures::Stream<Item = (Response, Duration)> + use<> {
    (0..n)
        .map(|_| {
            let request = held_query(app, token, user, position);
            async move {
                let started = Instant::now();
                (request.send().await.unwrap(), started.elapsed())
            }
        })
        .collect::<futures::stream::FuturesUnordered<_>>()
}

/// `KEEL_MAX_IN_FLIGHT` (2): of three requests sent at once that would each be held for
/// the wait bound, one is refused at once (503, Retry-After), never queued; `/healthz`
/// answers meanwhile; the places come back.
#[tokio::test]
async fn past_the_in_flight_bound_requests_get_503_at_once() {
    let app = spawn(|config| config.max_in_flight = 2).await;
    let (user, token) = app.register("Ada").await;
    let position = app.head_position().await;
    let mut held = held_queries(&app, &token, user, position, 3);

    let (shed, took) = held.next().await.unwrap();
    assert!(took < Duration::from_secs(1), "shed at once, took {took:?}");
    refused(shed, 503, "at-capacity").await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/healthz is outside the bound");
    while let Some((response, took)) = held.next().await {
        assert!(
            took >= Duration::from_secs(4),
            "held for the wait bound, took {took:?}"
        );
        refused(response, 503, "unavailable").await;
    }
    let (status, _) = app.get("/api/posts", &token).await;
    assert_eq!(status, 200, "the places came back");
    app.stop().await;
}

/// `X-Min-Position` beyond the head is 422 at once; past `KEEL_MAX_POSITION_WAITERS`
/// (1) waiting queries, the next waiter gets 503 at once.
#[tokio::test]
async fn min_position_waiters_are_bounded_and_a_future_position_is_refused_at_once() {
    let app = spawn(|config| config.max_position_waiters = 1).await;
    let (user, token) = app.register("Ada").await;
    let position = app.head_position().await;

    let started = Instant::now();
    let beyond = held_query(&app, &token, user, position + 1_000_000)
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(beyond.status(), 422);
    let body: Value = beyond.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "X-Min-Position");

    let mut waiting = held_queries(&app, &token, user, position, 2);
    let (refused_waiter, took) = waiting.next().await.unwrap();
    assert!(
        took < Duration::from_secs(1),
        "refused at once, took {took:?}"
    );
    refused(refused_waiter, 503, "at-capacity").await;
    let (waited, took) = waiting.next().await.unwrap();
    assert!(
        took >= Duration::from_secs(4),
        "the other waited, took {took:?}"
    );
    refused(waited, 503, "unavailable").await;
    app.stop().await;
}

/// Opens `n` sockets of `token`'s user.
async fn sockets(app: &TestApp, token: &str, n: usize) -> Vec<Socket> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(connect(app, Connect::header(token)).await);
    }
    sockets
}

/// `KEEL_WS_MAX_PER_USER` (8): the 9th handshake of a user gets 429 and its 8 sockets
/// keep receiving; `KEEL_WS_MAX_SOCKETS`: past it, 503; a closed socket frees its place.
#[tokio::test]
async fn sockets_are_limited_per_user_and_per_instance() {
    let app = spawn(|config| {
        config.ws_max_per_user = 8;
        config.ws_max_sockets = 12;
    })
    .await;
    let mut notifier = Notifier::new(&app).await;
    let ada = Uuid::new_v4();
    let ada_token = app.token(ada, &["user"]);
    let mut adas = sockets(&app, &ada_token, 8).await;
    socket_refused(
        &app,
        &ada_token,
        429,
        "too-many-requests",
        "the 9th socket of a user",
    )
    .await;
    let offset = notifier.send(ada, json!({"n": 1})).await;
    for socket in &mut adas {
        assert_eq!(socket.next().await["offset"], offset.as_str());
    }

    let bob = Uuid::new_v4();
    let bob_token = app.token(bob, &["user"]);
    let bobs = sockets(&app, &bob_token, 4).await;
    socket_refused(
        &app,
        &bob_token,
        503,
        "at-capacity",
        "a socket past the instance's bound",
    )
    .await;

    adas.pop().unwrap().close().await;
    let freed = eventually(
        Duration::from_secs(5),
        "a closed socket frees its place",
        || async {
            try_connect(&app.base_url, Connect::header(&bob_token))
                .await
                .map_err(|refused| format!("status {}", refused.status))
        },
    )
    .await;
    drop((freed, bobs));
    app.stop().await;
}

/// This process's resident memory (the API runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Declares a 10 MB body and sends none of it: the status line of the answer, which
/// must come from the headers alone.
async fn declared_10mb(address: &str, token: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /api/posts HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        10 * 1024 * 1024
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0; 12];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A token naming a random `kid` (its signature is never looked at: no key has that id).
fn token_with_random_kid() -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": Uuid::new_v4().to_string()});
    let claims = json!({"sub": Uuid::new_v4().to_string(), "exp": 4_000_000_000u64});
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(b"not a signature")
    )
}

/// Sends `n` requests with random `kid`s, `concurrency` at a time; all must be 401.
async fn random_kids(app: &TestApp, n: usize) {
    let statuses: Vec<u16> = futures::stream::iter(0..n)
        .map(|_| {
            app.client
                .get(app.url("/api/posts"))
                .bearer_auth(token_with_random_kid())
                .send()
        })
        .buffer_unordered(64)
        .map(|response| response.unwrap().status().as_u16())
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401), "unknown kids are 401");
}

/// P17: abuse leaves resources bounded: 1,000 requests declaring 10 MB bodies are
/// refused from their `Content-Length` alone (413), 100,000 tokens with random `kid`s
/// cost at most one JWKS fetch per cooldown, and memory afterwards is within 10 % of
/// before.
#[tokio::test]
async fn abuse_leaves_memory_and_jwks_fetches_bounded() {
    let app = spawn(|_| {}).await;
    let (_, token) = app.register("Ada").await;
    let address = app.base_url.trim_start_matches("http://").to_owned();
    // Warm up: connections, buffers and caches reach their working size first.
    random_kids(&app, 2_000).await;
    for _ in 0..50 {
        declared_10mb(&address, &token).await;
    }
    let before = rss_kib();
    let fetches = app.jwks.fetches();
    let started = Instant::now();

    let answers: Vec<String> = futures::stream::iter(0..1000)
        .map(|_| declared_10mb(&address, &token))
        .buffer_unordered(50)
        .collect()
        .await;
    assert!(
        answers.iter().all(|a| a == "HTTP/1.1 413"),
        "every 10 MB body refused: {:?}",
        answers.iter().find(|a| *a != "HTTP/1.1 413")
    );
    random_kids(&app, 100_000).await;

    let cooldowns = started.elapsed().as_secs() / 30 + 1;
    let fetched = app.jwks.fetches() - fetches;
    assert!(
        fetched as u64 <= cooldowns,
        "{fetched} JWKS fetches in {:?} (cooldown 30 s)",
        started.elapsed()
    );
    let after = rss_kib();
    assert!(
        after * 10 <= before * 11,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    eprintln!("rss {before} KiB -> {after} KiB in {:?}", started.elapsed());
    app.stop().await;
}
