//! DEV ONLY — never run in production. A tiny OpenID-style token issuer standing in
//! for Keycloak in Keel's demo and tests: it generates fresh RS256 and ES256 keys at
//! start, serves them as a JWKS at Keycloak's path, and mints JWTs on `POST /token`
//! for whatever subject and roles the caller asks for. Anyone who can reach it can
//! become anyone, which is the point for tests and the reason it must stay out of
//! production. The command API verifies the tokens against the JWKS it serves, and asks
//! its RFC 7662 introspection endpoint (at Keycloak's path, for one client authenticated
//! by HTTP Basic) whether a token is still active before sensitive operations; its
//! RFC 7009 revocation endpoint makes a token inactive.
//!
//! Modules: `issuer` (keys, minting, verifying its own tokens, revoked `jti`s) and
//! `introspection` (the client, the introspection and revocation endpoints). This file
//! holds the router and the bound [`Server`].

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{State, rejection::JsonRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod introspection;
mod issuer;

pub use introspection::{Client, ClientSecret, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET};
pub use issuer::{Alg, DEFAULT_AUDIENCE, DEFAULT_TOKEN_TYPE, IssuedClaims, Issuer, TokenRequest};

/// Path of the realm under the server root; the issuer URL ends with it.
pub const REALM_PATH: &str = "/realms/keel";

/// Path of the JWKS (Keycloak's), under [`REALM_PATH`].
pub const JWKS_PATH: &str = "/realms/keel/protocol/openid-connect/certs";

/// Path of the RFC 7662 introspection endpoint (Keycloak's), under [`REALM_PATH`].
pub const INTROSPECTION_PATH: &str = "/realms/keel/protocol/openid-connect/token/introspect";

/// Path of the RFC 7009 revocation endpoint (Keycloak's), under [`REALM_PATH`].
pub const REVOCATION_PATH: &str = "/realms/keel/protocol/openid-connect/revoke";

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
    #[error("decoding the P-256 public key for verification failed")]
    DecodeEcKey(#[source] jsonwebtoken::errors::Error),
    #[error("signing the token failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    #[error("binding the listener failed")]
    Bind(#[source] io::Error),
    #[error("serving requests failed")]
    Serve(#[source] io::Error),
}

/// The issuer's HTTP surface: JWKS, discovery document, `POST /token`, and the
/// introspection and revocation endpoints, which only `client` may call.
pub fn router(issuer: Arc<Issuer>, client: Client) -> Router {
    let endpoints = introspection::Endpoints {
        issuer: issuer.clone(),
        client,
    };
    Router::new()
        .route(JWKS_PATH, get(certs))
        .route(
            &format!("{REALM_PATH}/.well-known/openid-configuration"),
            get(discovery),
        )
        .route("/token", post(token))
        .with_state(issuer)
        .merge(
            Router::new()
                .route(INTROSPECTION_PATH, post(introspection::introspect))
                .route(REVOCATION_PATH, post(introspection::revoke))
                .with_state(endpoints),
        )
}

async fn certs(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    Json(issuer.jwks())
}

async fn discovery(State(issuer): State<Arc<Issuer>>) -> Json<Value> {
    Json(json!({
        "issuer": issuer.issuer(),
        "jwks_uri": issuer.jwks_uri(),
        "introspection_endpoint": issuer.introspection_endpoint(),
        "revocation_endpoint": issuer.revocation_endpoint(),
    }))
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
    client: Client,
}

impl Server {
    /// Binds `addr` and generates keys. The issuer URL is `<public_url or http://ADDR>/realms/keel`;
    /// a `public_url` that already ends with `/realms/keel` is taken as the issuer URL itself.
    /// `client` is the one client allowed to introspect and revoke.
    pub async fn bind(
        addr: &str,
        public_url: Option<&str>,
        client: Client,
    ) -> Result<Server, IssuerError> {
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
        Ok(Server {
            listener,
            issuer,
            client,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), IssuerError> {
        axum::serve(self.listener, router(self.issuer, self.client))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(IssuerError::Serve)
    }
}

#[cfg(test)]
mod tests;
