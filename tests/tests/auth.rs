//! The JWT attack catalogue (PROMISES P15, P20): every forged, stale or misaddressed
//! token is refused with 401 and no side effect; JWKS fetches stay bounded.

use std::time::{SystemTime, UNIX_EPOCH};

use dev_issuer::{Alg, DEFAULT_AUDIENCE, TokenRequest};
use keel_tests::TestApp;
use keel_tests::forge::{Forger, hs256, jwks_with_forger, unsigned};
use keel_tests::jwks_server::issuer;
use keel_tests::test_app::{mint, test_config};
use reqwest::Method;
use serde_json::{Value, json};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str) -> Value {
    json!({"iss": issuer().issuer(), "aud": DEFAULT_AUDIENCE, "sub": sub, "exp": now() + 600,
           "iat": now(), "realm_access": {"roles": ["user"]}})
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

/// Serves the issuer's keys plus the forger's key and a Keycloak-style encryption key.
async fn app_with_forger() -> (TestApp, Forger) {
    let (jwks, forger) = jwks_with_forger().await;
    let config = test_config(keel_tests::fresh_database().await.unwrap(), &jwks);
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    (app, forger)
}

async fn status_of(app: &TestApp, token: &str) -> u16 {
    app.send(
        Method::POST,
        "/api/users",
        token,
        json!({"email": "x@pii.test", "name": "X"}),
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test]
async fn the_attack_catalogue_is_refused_without_side_effects() {
    let (app, forger) = app_with_forger().await;
    let sub = uuid::Uuid::new_v4().to_string();
    let es = |claims: Value| forger.sign(&json!({"alg": "ES256", "kid": forger.kid}), &claims);
    let good = claims(&sub);
    let rs_kid = issuer().rs256_kid().to_owned();
    let other_issuer = dev_issuer::Issuer::generate(issuer().issuer()).unwrap();
    let foreign = other_issuer
        .mint(&TokenRequest {
            sub: sub.clone(),
            roles: vec!["admin".into()],
            ttl_seconds: 600,
            ..Default::default()
        })
        .unwrap();
    // The foreign token, relabelled with our key id: a signature by another key.
    let relabelled = {
        let mut parts: Vec<String> = foreign.split('.').map(str::to_owned).collect();
        parts[0] = keel_tests::forge::b64(
            json!({"alg": "RS256", "typ": "JWT", "kid": rs_kid})
                .to_string()
                .as_bytes(),
        );
        parts.join(".")
    };
    let valid_rs = mint(TokenRequest {
        sub: sub.clone(),
        roles: vec!["user".into()],
        ttl_seconds: 600,
        ..Default::default()
    });
    let truncated = valid_rs[..valid_rs.len() - 6].to_owned();
    let attacker_jwk_header = json!({"alg": "ES256", "kid": "attacker", "jwk": forger.jwk});
    let catalogue: Vec<(&str, String)> = vec![
        ("expired", es(with(good.clone(), "exp", json!(now() - 3600)))),
        ("not yet valid", es(with(good.clone(), "nbf", json!(now() + 3600)))),
        ("issued in the future", es(with(good.clone(), "iat", json!(now() + 3600)))),
        ("wrong issuer", es(with(good.clone(), "iss", json!("https://evil.example/realms/keel")))),
        ("no issuer", es(without(good.clone(), "iss"))),
        ("no expiry", es(without(good.clone(), "exp"))),
        ("expiry as a string", es(with(good.clone(), "exp", json!((now() + 600).to_string())))),
        ("expiry as an object", es(with(good.clone(), "exp", json!({"value": now() + 600})))),
        ("issuer as a number", es(with(good.clone(), "iss", json!(7)))),
        ("no subject", es(without(good.clone(), "sub"))),
        ("subject not a UUID", es(with(good.clone(), "sub", json!("admin")))),
        ("signature by another key", relabelled),
        ("alg none", unsigned(&json!({"alg": "none", "kid": forger.kid}), &good)),
        ("alg None, capitalised", unsigned(&json!({"alg": "None", "kid": forger.kid}), &good)),
        ("HS256 keyed with the RSA public key", hs256(&json!({"alg": "HS256", "kid": rs_kid}), &good, issuer().rsa_public_pem().as_bytes())),
        ("unknown kid", forger.sign(&json!({"alg": "ES256", "kid": "nobody"}), &good)),
        ("no kid", forger.sign(&json!({"alg": "ES256"}), &good)),
        ("embedded jwk header", forger.sign(&attacker_jwk_header, &good)),
        ("jku header", forger.sign(&json!({"alg": "ES256", "kid": "attacker", "jku": format!("{}/certs", app.base_url)}), &good)),
        ("encryption key's kid", forger.sign(&json!({"alg": "ES256", "kid": "enc-key"}), &good)),
        ("ES256 header on an RSA key", forger.sign(&json!({"alg": "ES256", "kid": rs_kid}), &good)),
        ("truncated signature", truncated),
        ("garbage", "garbage".to_owned()),
        ("three garbage parts", "abc.def.ghi".to_owned()),
    ];
    let before = app.event_count().await;
    for (case, token) in &catalogue {
        assert_eq!(status_of(&app, token).await, 401, "{case}");
    }
    let basic = app
        .client
        .post(app.url("/api/users"))
        .header("authorization", "Basic YWRhOnB3")
        .json(&json!({"email": "x@pii.test", "name": "X"}))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "basic auth");
    assert_eq!(
        app.event_count().await,
        before,
        "no refused token appended anything"
    );

    // Positive controls: the same path accepts good tokens of both algorithms.
    assert_eq!(
        status_of(&app, &es(good.clone())).await,
        201,
        "valid ES256 (forger's key is in the JWKS)"
    );
    let valid_es = mint(TokenRequest {
        sub: uuid::Uuid::new_v4().to_string(),
        roles: vec![],
        ttl_seconds: 600,
        alg: Alg::Es256,
        ..Default::default()
    });
    assert_eq!(
        status_of(&app, &valid_es).await,
        201,
        "valid ES256 from the issuer"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_cooldown() {
    let (app, forger) = app_with_forger().await;
    let fetches = app.jwks.fetches();
    let good = claims(&uuid::Uuid::new_v4().to_string());
    let app_ref = &app;
    let attempts = (0..50).map(|i| {
        let token = forger.sign(
            &json!({"alg": "ES256", "kid": format!("random-{i}")}),
            &good,
        );
        async move { status_of(app_ref, &token).await }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert!(statuses.iter().all(|s| *s == 401));
    assert!(
        app.jwks.fetches() - fetches <= 1,
        "{} fetches for 50 unknown kids",
        app.jwks.fetches() - fetches
    );
    app.stop().await;
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_identity_provider_is_down() {
    let app = TestApp::spawn().await.unwrap();
    app.jwks.set_up(false);
    let (_, token) = app.register("Ada").await;
    let (forger_status, fetches) = {
        let forger = Forger::new("new-key").unwrap();
        let token = forger.sign(
            &json!({"alg": "ES256", "kid": forger.kid}),
            &claims(&uuid::Uuid::new_v4().to_string()),
        );
        (status_of(&app, &token).await, app.jwks.fetches())
    };
    assert_eq!(
        forger_status, 401,
        "an unknown kid is 401, not 500, while the IdP is down"
    );
    let post = app
        .send(
            Method::POST,
            "/api/posts",
            &token,
            json!({"title": "t", "body": "b"}),
        )
        .await;
    assert_eq!(post.status(), 201, "a cached key still validates");
    assert!(
        fetches <= 2,
        "start-up fetch plus at most one refetch, saw {fetches}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_configured_audience_must_be_in_the_token() {
    let (jwks, forger) = jwks_with_forger().await;
    let mut config = test_config(keel_tests::fresh_database().await.unwrap(), &jwks);
    config.jwt_audience = vec!["blog".to_owned(), DEFAULT_AUDIENCE.to_owned()];
    let app = TestApp::spawn_with(config, jwks).await.unwrap();
    let sub = || uuid::Uuid::new_v4().to_string();
    let forged = |claims: Value| forger.sign(&json!({"alg": "ES256", "kid": forger.kid}), &claims);
    // The dev issuer always sets `aud` (`keel` unless asked otherwise): a token without
    // one is forged.
    let request = |audience: Option<&str>| TokenRequest {
        sub: sub(),
        ttl_seconds: 600,
        audience: audience.map(str::to_owned),
        ..Default::default()
    };
    assert_eq!(
        status_of(&app, &forged(without(claims(&sub()), "aud"))).await,
        401,
        "no aud"
    );
    assert_eq!(
        status_of(&app, &mint(request(Some("other")))).await,
        401,
        "wrong aud"
    );
    assert_eq!(
        status_of(
            &app,
            &forged(with(claims(&sub()), "aud", json!(["other", "blog"])))
        )
        .await,
        201,
        "a list containing a configured aud"
    );
    assert_eq!(
        status_of(&app, &mint(request(Some("blog")))).await,
        201,
        "the second configured aud"
    );
    assert_eq!(
        status_of(&app, &mint(request(None))).await,
        201,
        "the issuer's default aud, keel"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_key_rotated_in_is_fetched_once_when_its_first_token_arrives() {
    let app = TestApp::spawn().await.unwrap();
    let at_start = app.jwks.fetches();
    let forger = Forger::new("rotated-in").unwrap();
    let mut document = issuer().jwks();
    document["keys"]
        .as_array_mut()
        .unwrap()
        .push(forger.jwk.clone());
    app.jwks.set_document(document);

    let token = forger.sign(
        &json!({"alg": "ES256", "kid": forger.kid}),
        &claims(&uuid::Uuid::new_v4().to_string()),
    );
    assert_eq!(
        status_of(&app, &token).await,
        201,
        "the new key is fetched and accepted"
    );
    assert_eq!(app.jwks.fetches(), at_start + 1, "exactly one refetch");
    let unknown = forger.sign(
        &json!({"alg": "ES256", "kid": "still-unknown"}),
        &claims(&uuid::Uuid::new_v4().to_string()),
    );
    assert_eq!(status_of(&app, &unknown).await, 401);
    assert_eq!(
        app.jwks.fetches(),
        at_start + 1,
        "no second refetch within the cooldown"
    );
    let invalid = app
        .client
        .post(app.url("/api/users"))
        .bearer_auth(&unknown)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        invalid.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    app.stop().await;
}
