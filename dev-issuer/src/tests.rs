//! Unit tests: minted tokens verify against the served JWKS, the router serves it, and
//! introspection and revocation answer as RFC 7662 and RFC 7009 say.

use super::*;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use base64::{Engine, engine::general_purpose::STANDARD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::Jwk};
use serde_json::{Value, json};
use tower::ServiceExt;

const ISS: &str = "http://127.0.0.1:8081/realms/keel";

fn request(alg: Alg) -> TokenRequest {
    TokenRequest {
        sub: "0190a3c4-0000-7000-8000-000000000001".to_owned(),
        roles: vec!["admin".to_owned()],
        ttl_seconds: 600,
        alg,
        name: Some("Ada".to_owned()),
        ..Default::default()
    }
}

fn verify(issuer: &Issuer, token: &str, kid: &str, algorithm: Algorithm) -> Value {
    let jwks = issuer.jwks();
    let entry = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap();
    let jwk: Jwk = serde_json::from_value(entry.clone()).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref(), header.typ.as_deref()),
        (algorithm, Some(kid), Some("JWT"))
    );
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[ISS]);
    validation.set_audience(&["keel"]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub", "aud"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation)
        .unwrap()
        .claims
}

#[test]
fn rs256_and_es256_tokens_verify_against_their_jwks_entries() {
    let issuer = Issuer::generate(ISS).unwrap();
    assert!(issuer.rs256_kid().starts_with("dev-rs256-") && issuer.rs256_kid().len() == 18);
    assert!(issuer.es256_kid().starts_with("dev-es256-") && issuer.es256_kid().len() == 18);
    for (alg, kid, algorithm) in [
        (Alg::Rs256, issuer.rs256_kid(), Algorithm::RS256),
        (Alg::Es256, issuer.es256_kid(), Algorithm::ES256),
    ] {
        let claims = verify(
            &issuer,
            &issuer.mint(&request(alg)).unwrap(),
            kid,
            algorithm,
        );
        assert_eq!(claims["realm_access"]["roles"], json!(["admin"]));
        assert_eq!(claims["sub"], "0190a3c4-0000-7000-8000-000000000001");
        assert_eq!(claims["preferred_username"], "Ada");
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            600
        );
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        assert_eq!(
            (&claims["aud"], &claims["typ"]),
            (&json!("keel"), &json!("Bearer"))
        );
        assert!(claims.get("email").is_none());
    }
}

#[test]
fn negative_ttl_mints_an_expired_token() {
    let issuer = Issuer::generate(ISS).unwrap();
    let token = issuer
        .mint(&TokenRequest {
            ttl_seconds: -120,
            ..request(Alg::Rs256)
        })
        .unwrap();
    let key = DecodingKey::from_rsa_pem(issuer.rsa_public_pem().as_bytes()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["keel"]);
    let error = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap_err();
    assert_eq!(
        error.kind(),
        &jsonwebtoken::errors::ErrorKind::ExpiredSignature
    );
}

#[test]
fn token_request_defaults_to_rs256_one_hour_and_no_roles() {
    let request: TokenRequest = serde_json::from_value(json!({ "sub": "u" })).unwrap();
    assert_eq!(
        (request.alg, request.ttl_seconds, request.roles.len()),
        (Alg::Rs256, 3600, 0)
    );
    assert_eq!(
        (request.audience, request.typ, request.email, request.name),
        (None, None, None, None)
    );
    let default = TokenRequest::default();
    assert_eq!(
        (default.sub.as_str(), default.alg, default.ttl_seconds),
        ("", Alg::Rs256, 3600)
    );
    assert!(default.roles.is_empty() && default.audience.is_none() && default.typ.is_none());
    let es: TokenRequest = serde_json::from_value(json!({ "sub": "u", "alg": "ES256" })).unwrap();
    assert_eq!(es.alg, Alg::Es256);
}

#[test]
fn the_requested_audience_and_type_are_the_claims() {
    let issuer = Issuer::generate(ISS).unwrap();
    let token = issuer
        .mint(&TokenRequest {
            audience: Some("blog".to_owned()),
            typ: Some("ID".to_owned()),
            ..request(Alg::Rs256)
        })
        .unwrap();
    let claims = issuer.introspect(&token).unwrap();
    assert_eq!(
        (claims.aud, claims.typ.as_deref()),
        (Some(json!("blog")), Some("ID"))
    );
}

async fn call(issuer: Arc<Issuer>, request: Request<Body>) -> (StatusCode, Value) {
    let (status, body) = call_raw(issuer, request).await;
    (status, serde_json::from_slice(&body).unwrap())
}

async fn call_raw(issuer: Arc<Issuer>, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = router(issuer, Client::default())
        .oneshot(request)
        .await
        .unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, body.to_vec())
}

#[tokio::test]
async fn router_serves_the_jwks_and_the_discovery_document() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (status, jwks) = call(
        issuer.clone(),
        get("/realms/keel/protocol/openid-connect/certs"),
    )
    .await;
    assert_eq!((status, &jwks), (StatusCode::OK, &issuer.jwks()));
    assert_eq!(jwks["keys"][1]["crv"], "P-256");
    let (status, config) = call(
        issuer.clone(),
        get("/realms/keel/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        config,
        json!({
            "issuer": ISS,
            "jwks_uri": format!("{ISS}/protocol/openid-connect/certs"),
            "introspection_endpoint": format!("{ISS}/protocol/openid-connect/token/introspect"),
            "revocation_endpoint": format!("{ISS}/protocol/openid-connect/revoke"),
        })
    );
}

#[tokio::test]
async fn post_token_mints_and_rejects_bad_input_with_422() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let post = |body: &str| {
        Request::post("/token")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let body = r#"{"sub":"0190a3c4-0000-7000-8000-000000000001","roles":["admin"],"audience":"keel","ttl_seconds":600,"alg":"ES256"}"#;
    let (status, response) = call(issuer.clone(), post(body)).await;
    assert_eq!(
        (status, &response["token_type"], &response["expires_in"]),
        (StatusCode::OK, &json!("Bearer"), &json!(600))
    );
    verify(
        &issuer,
        response["access_token"].as_str().unwrap(),
        issuer.es256_kid(),
        Algorithm::ES256,
    );
    for bad in [
        r#"{"roles":[]}"#,
        r#"{"sub":"u","alg":"HS256"}"#,
        "not json",
    ] {
        let (status, problem) = call(issuer.clone(), post(bad)).await;
        assert_eq!(
            (status, &problem["status"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!(422))
        );
    }
}

/// `Authorization: Basic` for `id:secret`.
fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

/// A form POST to `path` with the default client's credentials.
fn form(path: &str, body: &str) -> Request<Body> {
    form_as(
        path,
        Some(&basic(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)),
        body,
    )
}

fn form_as(path: &str, authorization: Option<&str>, body: &str) -> Request<Body> {
    let mut builder =
        Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(authorization) = authorization {
        builder = builder.header(header::AUTHORIZATION, authorization);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

fn token_form(token: &str) -> String {
    format!("token={token}&token_type_hint=access_token")
}

#[tokio::test]
async fn introspection_describes_an_active_token() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    for alg in [Alg::Rs256, Alg::Es256] {
        let token = issuer.mint(&request(alg)).unwrap();
        let claims = issuer.introspect(&token).unwrap();
        let (status, answer) = call(
            issuer.clone(),
            form(INTROSPECTION_PATH, &token_form(&token)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            answer,
            json!({
                "active": true,
                "sub": "0190a3c4-0000-7000-8000-000000000001",
                "exp": claims.exp,
                "iat": claims.iat,
                "jti": claims.jti,
                "aud": "keel",
                "iss": ISS,
                "token_type": "Bearer",
                "client_id": "keel",
                "scope": "",
            })
        );
        assert_eq!(claims.exp - claims.iat.unwrap(), 600);
    }
    assert_eq!(issuer.introspections(), 2);
}

#[tokio::test]
async fn introspection_calls_expired_foreign_and_malformed_tokens_inactive() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let expired = issuer
        .mint(&TokenRequest {
            ttl_seconds: -1,
            ..request(Alg::Rs256)
        })
        .unwrap();
    let foreign = Issuer::generate(ISS)
        .unwrap()
        .mint(&request(Alg::Es256))
        .unwrap();
    let other_iss = Issuer::generate("http://elsewhere.invalid/realms/keel").unwrap();
    let valid = issuer.mint(&request(Alg::Rs256)).unwrap();
    // Our key id and signature over claims that were changed afterwards.
    let tampered = {
        let parts: Vec<&str> = valid.split('.').collect();
        let other: Vec<String> = other_iss
            .mint(&request(Alg::Rs256))
            .unwrap()
            .split('.')
            .map(str::to_owned)
            .collect();
        format!("{}.{}.{}", parts[0], other[1], parts[2])
    };
    for (what, token) in [
        ("expired", expired.as_str()),
        ("signed by another issuer's keys", foreign.as_str()),
        ("claims swapped under our signature", tampered.as_str()),
        ("not a JWT", "not-a-jwt"),
    ] {
        let (status, answer) =
            call(issuer.clone(), form(INTROSPECTION_PATH, &token_form(token))).await;
        assert_eq!(
            (status, answer),
            (StatusCode::OK, json!({ "active": false })),
            "{what}"
        );
    }
    assert_eq!(issuer.introspections(), 4);
}

#[tokio::test]
async fn both_endpoints_refuse_a_client_without_its_credentials() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let token = issuer.mint(&request(Alg::Rs256)).unwrap();
    let bearer = format!("Bearer {token}");
    let wrong_secret = basic(DEFAULT_CLIENT_ID, "guess");
    let wrong_id = basic("blog", DEFAULT_CLIENT_SECRET);
    for path in [INTROSPECTION_PATH, REVOCATION_PATH] {
        for authorization in [None, Some(&wrong_secret), Some(&wrong_id), Some(&bearer)] {
            let response = router(issuer.clone(), Client::default())
                .oneshot(form_as(
                    path,
                    authorization.map(String::as_str),
                    &token_form(&token),
                ))
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} {authorization:?}"
            );
            assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
            let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body, json!({ "error": "invalid_client" }));
        }
    }
    assert!(issuer.introspect(&token).is_some(), "nothing was revoked");
    assert_eq!(issuer.introspections(), 4, "refused calls count too");
}

#[tokio::test]
async fn a_configured_client_replaces_the_default_one() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let token = issuer.mint(&request(Alg::Rs256)).unwrap();
    let client = Client::new("blog", ClientSecret::new("s3cret"));
    let app = router(issuer.clone(), client);
    let default = form(INTROSPECTION_PATH, &token_form(&token));
    let response = app.clone().oneshot(default).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let configured = form_as(
        INTROSPECTION_PATH,
        Some(&basic("blog", "s3cret")),
        &token_form(&token),
    );
    let response = app.oneshot(configured).await.unwrap();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (&body["active"], &body["client_id"]),
        (&json!(true), &json!("blog"))
    );
}

#[tokio::test]
async fn a_request_without_a_token_is_invalid() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    for path in [INTROSPECTION_PATH, REVOCATION_PATH] {
        for body in ["", "token=", "token_type_hint=access_token"] {
            let (status, answer) = call(issuer.clone(), form(path, body)).await;
            assert_eq!(
                (status, answer),
                (
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "invalid_request" })
                ),
                "{path} {body:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_revoked_token_is_inactive_from_then_on() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let token = issuer.mint(&request(Alg::Es256)).unwrap();
    let other = issuer.mint(&request(Alg::Es256)).unwrap();
    let (status, body) = call_raw(issuer.clone(), form(REVOCATION_PATH, &token_form(&token))).await;
    assert_eq!((status, body.len()), (StatusCode::OK, 0));
    let jti = issuer.introspect(&other).unwrap().jti.unwrap();
    assert!(!issuer.is_revoked(&jti), "only that token is revoked");
    let (status, answer) = call(
        issuer.clone(),
        form(INTROSPECTION_PATH, &token_form(&token)),
    )
    .await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({ "active": false }))
    );
    let (_, answer) = call(
        issuer.clone(),
        form(INTROSPECTION_PATH, &token_form(&other)),
    )
    .await;
    assert_eq!(answer["active"], true);
}

#[tokio::test]
async fn revocation_answers_200_for_unknown_tokens_and_accepts_expired_ones() {
    let issuer = Arc::new(Issuer::generate(ISS).unwrap());
    let foreign = Issuer::generate(ISS)
        .unwrap()
        .mint(&request(Alg::Rs256))
        .unwrap();
    for token in ["not-a-jwt", foreign.as_str()] {
        let (status, body) =
            call_raw(issuer.clone(), form(REVOCATION_PATH, &token_form(token))).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 0));
    }
    assert_eq!(
        issuer.revoke(&foreign),
        None,
        "not ours: nothing remembered"
    );
    let expired = issuer
        .mint(&TokenRequest {
            ttl_seconds: -60,
            ..request(Alg::Rs256)
        })
        .unwrap();
    let (status, _) = call_raw(issuer.clone(), form(REVOCATION_PATH, &token_form(&expired))).await;
    assert_eq!(status, StatusCode::OK);
    let jti = jsonwebtoken::dangerous::insecure_decode::<Value>(&expired)
        .unwrap()
        .claims["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(issuer.is_revoked(&jti));
}

#[test]
fn revoking_a_jti_directly_deactivates_its_token() {
    let issuer = Issuer::generate(ISS).unwrap();
    let token = issuer.mint(&request(Alg::Rs256)).unwrap();
    let jti = issuer.introspect(&token).unwrap().jti.unwrap();
    issuer.revoke_jti(&jti);
    assert!(issuer.introspect(&token).is_none());
    assert_eq!(
        issuer.introspections(),
        0,
        "in-process calls are not counted"
    );
}

#[test]
fn a_client_secret_never_prints() {
    let client = Client::new("keel", ClientSecret::new("hunter2"));
    let shown = format!("{client:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("keel"),
        "{shown}"
    );
    assert_eq!(client.secret().expose(), "hunter2");
    assert_eq!("x".parse::<ClientSecret>().unwrap(), ClientSecret::new("x"));
}

#[test]
fn the_endpoint_paths_are_keycloaks_under_the_realm() {
    let issuer = Issuer::generate(ISS).unwrap();
    for (path, url) in [
        (JWKS_PATH, issuer.jwks_uri()),
        (INTROSPECTION_PATH, issuer.introspection_endpoint()),
        (REVOCATION_PATH, issuer.revocation_endpoint()),
    ] {
        assert!(path.starts_with(REALM_PATH), "{path}");
        assert_eq!(url, format!("http://127.0.0.1:8081{path}"));
    }
}
