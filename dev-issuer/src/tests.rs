//! Unit tests: minted tokens verify against the served JWKS, and the router serves it.

use super::*;
use axum::body::{Body, to_bytes};
use axum::http::Request;
use jsonwebtoken::{DecodingKey, Validation, jwk::Jwk};
use tower::ServiceExt;

const ISS: &str = "http://127.0.0.1:8081/realms/keel";

fn request(alg: Alg) -> TokenRequest {
    TokenRequest {
        sub: "0190a3c4-0000-7000-8000-000000000001".to_owned(),
        roles: vec!["admin".to_owned()],
        ttl_seconds: 600,
        alg,
        audience: Some("keel".to_owned()),
        email: None,
        name: Some("Ada".to_owned()),
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
    let es: TokenRequest = serde_json::from_value(json!({ "sub": "u", "alg": "ES256" })).unwrap();
    assert_eq!(es.alg, Alg::Es256);
}

async fn call(issuer: Arc<Issuer>, request: Request<Body>) -> (StatusCode, Value) {
    let response = router(issuer).oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
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
        json!({ "issuer": ISS, "jwks_uri": format!("{ISS}/protocol/openid-connect/certs") })
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
