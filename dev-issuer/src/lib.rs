//! DEV ONLY — never run in production. A tiny OpenID-style token issuer standing in
//! for Keycloak in Keel's demo and tests: it generates fresh RS256 and ES256 keys at
//! start, serves them as a JWKS at Keycloak's path, and mints JWTs on `POST /token`
//! for whatever subject and roles the caller asks for. Anyone who can reach it can
//! become anyone, which is the point for tests and the reason it must stay out of
//! production. The command API verifies the tokens against the JWKS it serves.

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use rand::rngs::OsRng;
use rsa::{
    RsaPrivateKey,
    pkcs1::EncodeRsaPrivateKey,
    pkcs8::{EncodePublicKey, LineEnding},
    traits::PublicKeyParts,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Path of the realm under the server root; the issuer URL ends with it.
pub const REALM_PATH: &str = "/realms/keel";

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("generating the RSA key failed")]
    GenerateRsaKey(#[source] rsa::Error),
    #[error("encoding the RSA private key failed")]
    EncodeRsaKey(#[source] rsa::pkcs1::Error),
    #[error("encoding the RSA public key as PEM failed")]
    EncodeRsaPublicKey(#[source] rsa::pkcs8::spki::Error),
    #[error("encoding the P-256 private key failed")]
    EncodeEcKey(#[source] p256::pkcs8::Error),
    #[error("the P-256 public key has no affine coordinates")]
    EcPointAtInfinity,
    #[error("signing the token failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("binding the listener failed")]
    Bind(#[source] io::Error),
    #[error("serving requests failed")]
    Serve(#[source] io::Error),
}

/// Signature algorithm of a minted token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Alg {
    #[default]
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
    #[serde(rename = "ES256", alias = "es256")]
    Es256,
}

/// What `POST /token` accepts and [`Issuer::mint`] signs.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenRequest {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: i64,
    #[serde(default)]
    pub alg: Alg,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

fn default_ttl_seconds() -> i64 {
    3600
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    realm_access: RealmAccess<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<&'a str>,
}

#[derive(Serialize)]
struct RealmAccess<'a> {
    roles: &'a [String],
}

/// One RSA-2048 and one P-256 signing key, freshly generated, plus the issuer URL.
pub struct Issuer {
    issuer: String,
    rs256_kid: String,
    es256_kid: String,
    rs256_key: EncodingKey,
    es256_key: EncodingKey,
    rsa_public_pem: String,
    jwks: Value,
}

impl Issuer {
    /// Generates fresh keys; `issuer` is the `iss` of every token (e.g. `http://127.0.0.1:8081/realms/keel`).
    pub fn generate(issuer: impl Into<String>) -> Result<Issuer, IssuerError> {
        let rsa = RsaPrivateKey::new(&mut OsRng, 2048).map_err(IssuerError::GenerateRsaKey)?;
        let rsa_der = rsa.to_pkcs1_der().map_err(IssuerError::EncodeRsaKey)?;
        let rsa_public_pem = rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(IssuerError::EncodeRsaPublicKey)?;
        let ec = p256::SecretKey::random(&mut OsRng);
        let ec_der = ec.to_pkcs8_der().map_err(IssuerError::EncodeEcKey)?;
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&ec.public_key(), false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(IssuerError::EcPointAtInfinity);
        };
        let rs256_kid = format!("dev-rs256-{:08x}", rand::random::<u32>());
        let es256_kid = format!("dev-es256-{:08x}", rand::random::<u32>());
        let jwks = json!({ "keys": [
            { "kty": "RSA", "kid": rs256_kid, "use": "sig", "alg": "RS256",
              "n": URL_SAFE_NO_PAD.encode(rsa.n().to_bytes_be()),
              "e": URL_SAFE_NO_PAD.encode(rsa.e().to_bytes_be()) },
            { "kty": "EC", "kid": es256_kid, "use": "sig", "alg": "ES256", "crv": "P-256",
              "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y) },
        ]});
        Ok(Issuer {
            issuer: issuer.into(),
            rs256_key: EncodingKey::from_rsa_der(rsa_der.as_bytes()),
            es256_key: EncodingKey::from_ec_der(ec_der.as_bytes()),
            rs256_kid,
            es256_kid,
            rsa_public_pem,
            jwks,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Absolute URL of the JWKS, at Keycloak's path under the issuer.
    pub fn jwks_uri(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer)
    }

    /// Public keys only: `{"keys": [RS256 key, ES256 key]}`.
    pub fn jwks(&self) -> Value {
        self.jwks.clone()
    }

    pub fn rs256_kid(&self) -> &str {
        &self.rs256_kid
    }

    pub fn es256_kid(&self) -> &str {
        &self.es256_kid
    }

    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of the RSA public key.
    pub fn rsa_public_pem(&self) -> String {
        self.rsa_public_pem.clone()
    }

    /// Signs a JWT for `request`; a negative `ttl_seconds` yields an already expired token.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, IssuerError> {
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.issuer,
            sub: &request.sub,
            exp: iat.saturating_add(request.ttl_seconds),
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            realm_access: RealmAccess {
                roles: &request.roles,
            },
            aud: request.audience.as_deref(),
            email: request.email.as_deref(),
            name: request.name.as_deref(),
            preferred_username: request.name.as_deref(),
        };
        let (algorithm, kid, key) = match request.alg {
            Alg::Rs256 => (Algorithm::RS256, &self.rs256_kid, &self.rs256_key),
            Alg::Es256 => (Algorithm::ES256, &self.es256_kid, &self.es256_key),
        };
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, key).map_err(IssuerError::Sign)
    }
}

/// The issuer's HTTP surface: JWKS, discovery document and `POST /token`.
pub fn router(issuer: Arc<Issuer>) -> Router {
    Router::new()
        .route(
            &format!("{REALM_PATH}/protocol/openid-connect/certs"),
            get(certs),
        )
        .route(
            &format!("{REALM_PATH}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route("/token", post(token))
        .with_state(issuer)
}

async fn certs(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    Json(issuer.jwks())
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    Json(json!({ "issuer": issuer.issuer(), "jwks_uri": issuer.jwks_uri() }))
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(JsonRejection::MissingJsonContentType(r)) => {
            return problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, r.body_text());
        }
        Err(rejection) => return problem(StatusCode::UNPROCESSABLE_ENTITY, rejection.body_text()),
    };
    match issuer.mint(&request) {
        Ok(access_token) => Json(json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": request.ttl_seconds,
        }))
        .into_response(),
        Err(error) => {
            tracing::error!(
                error = &error as &dyn std::error::Error,
                "minting a token failed"
            );
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            )
        }
    }
}

fn problem(status: StatusCode, detail: String) -> Response {
    let title = status.canonical_reason().unwrap_or("error");
    let body = json!({ "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        Json(body),
    )
        .into_response()
}

/// A bound issuer server: bind first (port 0 works), read the address, then run.
pub struct Server {
    listener: TcpListener,
    issuer: Arc<Issuer>,
}

impl Server {
    /// Binds `addr` and generates keys. The issuer URL is `<public_url or http://ADDR>/realms/keel`;
    /// a `public_url` that already ends with `/realms/keel` is taken as the issuer URL itself.
    pub async fn bind(addr: &str, public_url: Option<&str>) -> Result<Server, IssuerError> {
        let listener = TcpListener::bind(addr).await.map_err(IssuerError::Bind)?;
        let local = listener.local_addr().map_err(IssuerError::Bind)?;
        let base = public_url.map_or_else(
            || format!("http://{local}"),
            |u| u.trim_end_matches('/').to_owned(),
        );
        let url = if base.ends_with(REALM_PATH) {
            base
        } else {
            format!("{base}{REALM_PATH}")
        };
        let issuer = Arc::new(Issuer::generate(url)?);
        Ok(Server { listener, issuer })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IssuerError> {
        axum::serve(self.listener, router(self.issuer))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(IssuerError::Serve)
    }
}

#[cfg(test)]
mod tests;
