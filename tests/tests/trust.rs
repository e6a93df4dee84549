//! Trust (PROMISES P15, P21): authorization is live. Revocations, demotions and
//! deactivations are enforced by every instance within a second, within five seconds with
//! Redis down, and forever after (Redis flushed, every process restarted); tokens that
//! are not plain access tokens for Keel are refused; sockets of revoked tokens or users
//! close with 4003; browsers open sockets with single-use tickets. Every refusal is shown
//! to change nothing.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dev_issuer::TokenRequest;
use events::read_model::Projection;
use keel_tests::forge::jwks_with_forger;
use keel_tests::identity_provider::IdentityProvider;
use keel_tests::jwks_server::issuer;
use keel_tests::notifications::{Auth, Connect, Socket, connect, try_connect};
use keel_tests::principals::Principal;
use keel_tests::projections::{self, Running};
use keel_tests::redis_server::RedisServer;
use keel_tests::test_app::{mint, test_config};
use keel_tests::{JwksServer, TestApp, eventually, fresh_database};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

/// The claims of a compact JWS, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWS has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

/// Two command-api instances on one log (one database, one stream), Redis at `redis`.
async fn pair_on(redis: Option<&str>) -> (TestApp, TestApp) {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    if let Some(redis) = redis {
        config.connections.redis_url = redis.to_owned();
    }
    let second = config.clone();
    let a = TestApp::spawn_with(config, jwks).await.unwrap();
    let b = TestApp::spawn_with(second, JwksServer::start().await.unwrap())
        .await
        .unwrap();
    (a, b)
}

/// Registers a user whose token grants `roles` (Keel records them); its id and token.
async fn registered(app: &TestApp, roles: &[&str]) -> (Uuid, String) {
    let id = Uuid::new_v4();
    let token = app.token(id, roles);
    let response = app
        .send(
            Method::POST,
            "/api/users",
            &token,
            json!({"email": format!("{}@pii.test", id.simple()), "name": "Someone"}),
        )
        .await;
    assert_eq!(response.status(), 201, "registering {roles:?}");
    (id, token)
}

async fn status(app: &TestApp, method: Method, path: &str, token: &str) -> u16 {
    app.request(method, path, token)
        .send()
        .await
        .expect("the app answers")
        .status()
        .as_u16()
}

/// Polls until `path` answers `expected` to `token` on `app`, at most `within`.
async fn refused_within(app: &TestApp, path: &str, token: &str, expected: u16, within: Duration) {
    eventually(
        within,
        &format!("GET {path} answers {expected}"),
        || async {
            match status(app, Method::GET, path, token).await {
                s if s == expected => Ok(()),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await;
}

/// `POST /api/admin/revocations` with `body`: the status and the answer.
async fn revoke(app: &TestApp, admin: &str, body: Value) -> (u16, Value) {
    let response = app
        .send(Method::POST, "/api/admin/revocations", admin, body)
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn ticket(app: &TestApp, token: &str) -> (u16, Value) {
    let response = app
        .request(Method::POST, "/api/ws-tickets", token)
        .send()
        .await
        .expect("the app answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn socket_with_ticket(app: &TestApp, token: &str) -> Socket {
    let (status, body) = ticket(app, token).await;
    assert_eq!(status, 201, "{body}");
    connect(app, Connect::ticket(body["ticket"].as_str().unwrap())).await
}

#[tokio::test]
async fn a_revoked_admin_token_is_refused_by_every_instance_within_a_second() {
    let (a, b) = pair_on(None).await;
    // The projectors announce the revocation on Redis (policy.invalidate.*).
    let projectors = Running::start_with(projections::config(&a), &[Projection::Users]).await;
    let (_, root) = registered(&a, &["user", "admin"]).await;
    let (_, stolen) = registered(&a, &["user", "admin"]).await;
    assert_eq!(status(&b, Method::GET, "/api/events", &stolen).await, 200);
    let claims = claims_of(&stolen);
    // Requests with the stolen token keep coming to B while it is revoked through A.
    let stop = tokio_util::sync::CancellationToken::new();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(Instant, u16)>::new()));
    let load = {
        let (client, url, stolen, stop, seen) = (
            b.client.clone(),
            b.url("/api/events"),
            stolen.clone(),
            stop.clone(),
            seen.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let started = Instant::now();
                let response = client.get(&url).bearer_auth(&stolen).send().await;
                let status = response.map_or(0, |r| r.status().as_u16());
                seen.lock().unwrap().push((started, status));
            }
        })
    };

    let (revoked, body) = revoke(
        &a,
        &root,
        json!({"jti": claims["jti"], "expires_at": claims["exp"]}),
    )
    .await;
    assert_eq!(revoked, 201, "{body}");
    assert!(
        body["stream_id"].as_str().unwrap().starts_with("token-"),
        "{body}"
    );
    assert_eq!(body["events"][0]["type"], "token.revoked");
    assert_eq!(body["jti"], claims["jti"]);
    assert_eq!(body["expires_at"], claims["exp"]);
    assert!(
        body["created_at"].is_string() && body["position"].is_i64(),
        "{body}"
    );
    let revoked_at = Instant::now();

    // The instance that answered enforces it at once; the other within a second.
    assert_eq!(status(&a, Method::GET, "/api/events", &stolen).await, 401);
    refused_within(&b, "/api/events", &stolen, 401, Duration::from_secs(1)).await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
    // Under that load, nothing is accepted past the bound (PROMISES P21).
    let bound = revoked_at + Duration::from_secs(1);
    eventually(
        Duration::from_secs(10),
        "20 requests past the bound",
        || async {
            let past = seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(at, _)| *at > bound)
                .count();
            if past >= 20 {
                Ok(())
            } else {
                Err(format!("{past} requests"))
            }
        },
    )
    .await;
    stop.cancel();
    load.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|(_, s)| *s == 200),
        "the load ran before the revocation"
    );
    let late: Vec<_> = seen
        .iter()
        .filter(|(at, status)| *at > bound && *status != 401)
        .collect();
    assert!(
        seen.iter().any(|(at, _)| *at > bound) && late.is_empty(),
        "requests past the bound not refused: {late:?}"
    );

    // Refused everywhere, appending nothing.
    let count = a.event_count().await;
    assert_eq!(b.create_post_status(&stolen).await, 401);
    assert_eq!(
        status(&b, Method::GET, "/api/admin/revocations", &stolen).await,
        401
    );
    assert_eq!(a.event_count().await, count, "a refused request appended");

    // Listed on both instances; the revoking admin is unaffected.
    for app in [&a, &b] {
        let (status, list) = app.get("/api/admin/revocations", &root).await;
        assert_eq!(status, 200, "{list}");
        let item = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["jti"] == claims["jti"])
            .unwrap_or_else(|| panic!("the revocation is not listed: {list}"));
        assert_eq!(item["expires_at"], claims["exp"]);
        assert!(item["revoked_by"].is_string(), "{item}");
    }
    // Revoking it again changes nothing.
    let (again, body) = revoke(
        &a,
        &root,
        json!({"jti": claims["jti"], "expires_at": claims["exp"]}),
    )
    .await;
    assert_eq!(again, 200);
    assert_eq!(body["events"], json!([]));
    assert_eq!(a.event_count().await, count);
    projectors.stop().await;
    b.stop_keeping_stream().await;
    a.stop().await;
}

#[tokio::test]
async fn a_revocation_holds_with_redis_down_flushed_and_every_process_restarted() {
    let mut redis = RedisServer::start().await.unwrap();
    let (a, b) = pair_on(Some(&redis.url_for(Principal::CommandApi))).await;
    let (_, root) = registered(&a, &["user", "admin"]).await;
    let (victim, old) = registered(&a, &["user"]).await;
    assert_eq!(status(&b, Method::GET, "/api/posts", &old).await, 200);

    // No Pub/Sub at all: the instances still learn it from the log.
    redis.stop();
    let (revoked, body) = revoke(&a, &root, json!({"user_id": victim})).await;
    assert_eq!(revoked, 201, "{body}");
    assert_eq!(body["user_id"], json!(victim));
    assert_eq!(body["events"][0]["type"], "user.tokens_revoked");
    assert!(body["issued_up_to"].is_i64() && body["created_at"].is_string());
    refused_within(&b, "/api/posts", &old, 401, Duration::from_secs(5)).await;

    // Redis back, empty, and every process restarted: still refused.
    redis.start_again().await.unwrap();
    let mut flush = redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut flush)
        .await
        .unwrap();
    let mut config = test_config(a.database_url.clone(), &a.jwks);
    config.connections.redis_url = redis.url_for(Principal::CommandApi);
    config.connections.stream = a.stream.clone();
    config.connections.subject_prefix = a.subject_prefix.clone();
    b.stop_keeping_stream().await;
    a.stop_keeping_stream().await;
    for _ in 0..2 {
        let app = TestApp::spawn_with(config.clone(), JwksServer::start().await.unwrap())
            .await
            .unwrap();
        assert_eq!(status(&app, Method::GET, "/api/posts", &old).await, 401);
        assert_eq!(status(&app, Method::GET, "/api/posts", &root).await, 200);
        app.stop_keeping_stream().await;
    }
}

#[tokio::test]
async fn a_demoted_admin_loses_admin_rights_on_every_instance_within_a_second() {
    let (a, b) = pair_on(None).await;
    let (_, root) = registered(&a, &["user", "admin"]).await;
    let (demoted, token) = registered(&a, &["user", "admin"]).await;
    for app in [&a, &b] {
        assert_eq!(status(app, Method::GET, "/api/events", &token).await, 200);
    }
    let response = a
        .send(
            Method::PUT,
            &format!("/api/users/{demoted}/roles"),
            &root,
            json!({"roles": ["user"]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    assert_eq!(status(&a, Method::GET, "/api/events", &token).await, 403);
    refused_within(&b, "/api/events", &token, 403, Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // The token still says admin: its admin commands are refused and append nothing.
    let count = a.event_count().await;
    let promote = b
        .send(
            Method::PUT,
            &format!("/api/users/{demoted}/roles"),
            &token,
            json!({"roles": ["user", "admin"]}),
        )
        .await;
    assert_eq!(promote.status(), 403);
    assert_eq!(a.event_count().await, count);
    // As a user it still works.
    assert_eq!(status(&b, Method::GET, "/api/posts", &token).await, 200);
    b.stop_keeping_stream().await;
    a.stop().await;
}

#[tokio::test]
async fn a_deactivated_user_is_refused_everywhere_and_its_socket_closes_with_4003() {
    let (a, b) = pair_on(None).await;
    let (_, root) = registered(&a, &["user", "admin"]).await;
    let (user, token) = registered(&a, &["user"]).await;
    let mut socket = socket_with_ticket(&b, &token).await;
    let response = a
        .request(Method::DELETE, &format!("/api/users/{user}"), &root)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(socket.closed(Duration::from_secs(2)).await, Some(4003));
    let count = a.event_count().await;
    for app in [&a, &b] {
        refused_within(app, "/api/posts", &token, 403, Duration::from_secs(1)).await;
        for path in [format!("/api/users/{user}"), "/api/me/dashboard".to_owned()] {
            assert_eq!(status(app, Method::GET, &path, &token).await, 403, "{path}");
        }
        assert_eq!(app.create_post_status(&token).await, 403);
        assert_eq!(ticket(app, &token).await.0, 403);
        let refused = try_connect(&app.base_url, Connect::header(&token))
            .await
            .err()
            .expect("the socket is refused");
        assert_eq!(refused.status, 403);
    }
    assert_eq!(a.event_count().await, count, "a refused request appended");
    b.stop_keeping_stream().await;
    a.stop().await;
}

#[tokio::test]
async fn a_users_cutoff_refuses_tokens_issued_before_it_and_accepts_later_ones() {
    let (a, b) = pair_on(None).await;
    let (_, root) = registered(&a, &["user", "admin"]).await;
    let (user, old) = registered(&a, &["user"]).await;
    let mut socket = socket_with_ticket(&b, &old).await;
    let (revoked, body) = revoke(&a, &root, json!({"user_id": user})).await;
    assert_eq!(revoked, 201, "{body}");
    let cutoff = body["issued_up_to"].as_i64().unwrap();
    assert_eq!(socket.closed(Duration::from_secs(2)).await, Some(4003));
    refused_within(&b, "/api/posts", &old, 401, Duration::from_secs(1)).await;
    // A token minted in the cut-off's second cannot be told apart from one minted just
    // before it: refused too. One minted in a later second works.
    eventually(
        Duration::from_secs(3),
        "a second after the cut-off",
        || async {
            if chrono::Utc::now().timestamp() > cutoff {
                Ok(())
            } else {
                Err("same second".to_owned())
            }
        },
    )
    .await;
    let fresh = a.token(user, &["user"]);
    assert!(claims_of(&fresh)["iat"].as_i64().unwrap() > cutoff);
    for app in [&a, &b] {
        assert_eq!(status(app, Method::GET, "/api/posts", &fresh).await, 200);
    }
    let (_, list) = a.get("/api/admin/revocations", &root).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["user_id"] == json!(user) && i["issued_up_to"] == json!(cutoff)),
        "{list}"
    );
    b.stop_keeping_stream().await;
    a.stop().await;
}

#[tokio::test]
async fn tokens_that_are_not_plain_access_tokens_for_keel_are_refused_with_no_effect() {
    let (jwks, forger) = jwks_with_forger().await;
    let config = test_config(fresh_database().await.unwrap(), &jwks);
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let forged = |claims: Value| forger.sign(&json!({"alg": "ES256", "kid": forger.kid}), &claims);
    let admin_claims = |sub: Uuid| {
        json!({"iss": issuer().issuer(), "sub": sub, "aud": "keel", "exp": now + 600,
               "iat": now, "realm_access": {"roles": ["user", "admin"]}})
    };
    let request = |typ: Option<&str>, audience: Option<&str>| {
        mint(TokenRequest {
            sub: Uuid::new_v4().to_string(),
            roles: vec!["user".into()],
            typ: typ.map(str::to_owned),
            audience: audience.map(str::to_owned),
            ..TokenRequest::default()
        })
    };
    let mut with_jti = admin_claims(Uuid::new_v4());
    with_jti["jti"] = json!("forged-but-valid");
    let register = |token: String| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/api/users",
                &token,
                json!({"email": "x@pii.test", "name": "X"}),
            )
            .await
            .status()
            .as_u16()
        }
    };
    // Controls: the same kinds of token, done right, are accepted.
    assert_eq!(register(forged(with_jti)).await, 201);
    assert_eq!(register(request(Some("Bearer"), None)).await, 201);
    let count = app.event_count().await;
    for (what, token) in [
        (
            "an admin token without jti",
            forged(admin_claims(Uuid::new_v4())),
        ),
        ("an ID token", request(Some("ID"), None)),
        ("a refresh token", request(Some("Refresh"), None)),
        (
            "a token for another audience",
            request(None, Some("account")),
        ),
    ] {
        assert_eq!(register(token).await, 401, "{what}");
    }
    assert_eq!(app.event_count().await, count, "a refused token appended");
    app.stop().await;
}

#[tokio::test]
async fn jwks_without_a_usable_key_keeps_the_cached_keys() {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.jwks_refresh = Duration::from_secs(1);
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let (_, token) = registered(&app, &["user"]).await;
    let fetched = app.jwks.fetches();
    app.jwks
        .set_document(json!({"keys": [{"kty": "oct", "kid": "x", "k": "c2VjcmV0"}]}));
    eventually(
        Duration::from_secs(5),
        "the JWKS is fetched again",
        || async {
            let now = app.jwks.fetches();
            if now > fetched {
                Ok(())
            } else {
                Err(format!("{now} fetches"))
            }
        },
    )
    .await;
    assert_eq!(status(&app, Method::GET, "/api/posts", &token).await, 200);
    app.stop().await;
}

#[tokio::test]
async fn an_identity_provider_reached_in_clear_over_the_network_is_refused_at_start() {
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.jwks_url = "http://sso.example/realms/keel/protocol/openid-connect/certs".to_owned();
    let error = command_api::build(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("KEEL_JWKS_URL"), "{error}");
    config.jwks_url = jwks.url.clone();
    config.introspection_url = Some("http://sso.example/introspect".to_owned());
    let error = command_api::build(config).await.err().expect("refused");
    assert!(
        error.to_string().contains("KEEL_INTROSPECTION_URL"),
        "{error}"
    );
}

#[tokio::test]
async fn a_ticket_opens_one_socket_and_nothing_else() {
    let app = TestApp::spawn().await.unwrap();
    let (_, token) = registered(&app, &["user"]).await;
    let (minted, body) = ticket(&app, &token).await;
    assert_eq!(minted, 201, "{body}");
    assert_eq!(body["expires_in"], 300);
    let ticket = body["ticket"].as_str().unwrap().to_owned();
    assert_eq!(URL_SAFE_NO_PAD.decode(&ticket).unwrap().len(), 32);

    // Redis holds its hash only.
    let mut redis = redis::Client::open(app.redis_admin_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("keel:{}:ws-ticket:*", app.stream))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains(&ticket));
    let stored: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!stored.contains(&ticket) && !stored.contains(&token));

    // A ticket in the query string is refused without being consumed.
    let query = format!("ticket={ticket}");
    let in_query = Connect {
        auth: Auth::Nothing,
        query: Some(&query),
        ..Connect::ticket("")
    };
    let refused = try_connect(&app.base_url, in_query).await.err();
    assert!(refused.is_some_and(|r| r.status == 401));

    let socket = connect(&app, Connect::ticket(&ticket)).await;
    assert_eq!(socket.protocol.as_deref(), Some("keel.v1"));
    let second = try_connect(&app.base_url, Connect::ticket(&ticket)).await;
    assert_eq!(second.err().map(|r| r.status), Some(401), "a second use");
    let forged = URL_SAFE_NO_PAD.encode([7_u8; 32]);
    let refused = try_connect(&app.base_url, Connect::ticket(&forged)).await;
    assert_eq!(
        refused.err().map(|r| r.status),
        Some(401),
        "a forged ticket"
    );

    // An expired ticket (Redis dropped it at its TTL) is refused.
    let (_, body) = self::ticket(&app, &token).await;
    let expiring = body["ticket"].as_str().unwrap().to_owned();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("keel:{}:ws-ticket:*", app.stream))
        .query_async(&mut redis)
        .await
        .unwrap();
    for key in keys {
        redis::cmd("PEXPIRE")
            .arg(key)
            .arg(1)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(2), "the ticket expired", || async {
        match try_connect(&app.base_url, Connect::ticket(&expiring)).await {
            Err(refused) if refused.status == 401 => Ok(()),
            Err(refused) => Err(format!("{refused:?}")),
            Ok(_) => Err("accepted".to_owned()),
        }
    })
    .await;

    // Not registered: no ticket.
    let stranger = app.token(Uuid::new_v4(), &["user"]);
    assert_eq!(self::ticket(&app, &stranger).await.0, 403);
    assert_eq!(status(&app, Method::GET, "/api/posts", &token).await, 200);
    socket.close().await;
    app.stop().await;
}

#[tokio::test]
async fn sensitive_operations_ask_the_identity_provider_and_fail_closed() {
    let provider = IdentityProvider::start().await.unwrap();
    let jwks = JwksServer::start().await.unwrap();
    let mut config = test_config(fresh_database().await.unwrap(), &jwks);
    config.introspection_url = Some(provider.introspection_url());
    config.introspection_client_id = provider.client_id().to_owned();
    config.introspection_client_secret = provider.client_secret().parse().unwrap();
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let (_, root) = registered(&app, &["user", "admin"]).await;
    let (other, _) = registered(&app, &["user"]).await;
    assert_eq!(provider.calls(), 0, "registering is not sensitive");

    // Active: asked once, the answer reused.
    for _ in 0..3 {
        assert_eq!(status(&app, Method::GET, "/api/events", &root).await, 200);
    }
    assert_eq!(provider.calls(), 1, "an active answer is reused");

    // Inactive at the provider: every sensitive operation is 401, nothing is appended;
    // the rest still works.
    let (_, revoked) = registered(&app, &["user", "admin"]).await;
    provider.revoke(&revoked);
    let count = app.event_count().await;
    let sensitive = [
        (
            Method::PUT,
            format!("/api/users/{other}/roles"),
            Some(json!({"roles": ["user", "admin"]})),
        ),
        (Method::DELETE, format!("/api/users/{other}"), None),
        (
            Method::POST,
            "/api/admin/revocations".to_owned(),
            Some(json!({"user_id": other})),
        ),
        (Method::GET, "/api/events".to_owned(), None),
        (
            Method::GET,
            format!("/api/streams/user-{other}/events"),
            None,
        ),
    ];
    for (method, path, body) in &sensitive {
        let mut request = app.request(method.clone(), path, &revoked);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
    }
    assert_eq!(
        app.event_count().await,
        count,
        "a refused operation appended"
    );
    assert_eq!(status(&app, Method::GET, "/api/posts", &revoked).await, 200);

    // The provider down: sensitive operations are 503 with Retry-After (fail closed).
    provider.set_up(false);
    let (_, unasked) = registered(&app, &["user", "admin"]).await;
    let response = app
        .request(Method::GET, "/api/events", &unasked)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(status(&app, Method::GET, "/api/posts", &unasked).await, 200);
    provider.set_up(true);

    // An active answer is reused for at most 10 s: revoked there, refused here by then.
    provider.revoke(&root);
    refused_within(&app, "/api/events", &root, 401, Duration::from_secs(12)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_users_consumer_made_before_revocations_existed_is_updated_to_read_them() {
    let app = TestApp::spawn().await.unwrap();
    let nats = keel_tests::principals::nats_connect(&app.nats_admin_url())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(nats);
    let stream = jetstream.get_stream(&app.stream).await.unwrap();
    let old = format!("{}.user.>", app.subject_prefix);
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("projector-users".to_owned()),
            filter_subject: old,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let (_, root) = registered(&app, &["user", "admin"]).await;
    let (revoked, body) = revoke(
        &app,
        &root,
        json!({"jti": "old-consumer", "expires_at": chrono::Utc::now().timestamp() + 600}),
    )
    .await;
    assert_eq!(revoked, 201, "{body}");
    let projectors = Running::start_with(projections::config(&app), &[Projection::Users]).await;
    let head = events::event_log::head(&app.pool).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "users applied the revocation",
        || async {
            let at = events::read_model::position(&app.pool, Projection::Users, "rm_users")
                .await
                .map_err(|e| e.to_string())?;
            if at >= head {
                Ok(())
            } else {
                Err(format!("at {at} of {head}"))
            }
        },
    )
    .await;
    let info = stream
        .consumer_info("projector-users")
        .await
        .unwrap()
        .clone();
    assert_eq!(
        info.config.filter_subject,
        format!("{}.>", app.subject_prefix)
    );
    projectors.stop().await;
    app.stop().await;
}
