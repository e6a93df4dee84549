//! The dev issuer's introspection and revocation endpoints for tests, on a free port:
//! counts the introspection requests it receives and can play an identity provider that is down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use dev_issuer::{Client, INTROSPECTION_PATH, Issuer, REVOCATION_PATH};
use tokio::task::JoinHandle;

use crate::jwks_server::issuer;

#[derive(Clone)]
struct Shared {
    calls: Arc<AtomicUsize>,
    up: Arc<AtomicBool>,
}

/// Serves `dev_issuer::router` for the shared test issuer ([`issuer()`]), so it judges
/// every token the kit mints; stops serving when dropped.
pub struct IdentityProvider {
    base_url: String,
    client: Client,
    shared: Shared,
    task: JoinHandle<()>,
}

/// Counts introspection requests (answered or not) and answers 503 to everything while down.
async fn guard(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    if request.uri().path() == INTROSPECTION_PATH {
        shared.calls.fetch_add(1, Ordering::SeqCst);
    }
    if !shared.up.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    next.run(request).await
}

impl IdentityProvider {
    /// Serves the shared issuer on a free port, for the dev issuer's default client
    /// (`keel`, `keel-dev-introspection-secret`).
    pub async fn start() -> anyhow::Result<Self> {
        let client = Client::default();
        let shared = Shared {
            calls: Arc::new(AtomicUsize::new(0)),
            up: Arc::new(AtomicBool::new(true)),
        };
        let router = dev_issuer::router(issuer().clone(), client.clone())
            .layer(middleware::from_fn_with_state(shared.clone(), guard));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            base_url,
            client,
            shared,
            task,
        })
    }

    /// `KEEL_INTROSPECTION_URL` for a command API that asks this provider.
    pub fn introspection_url(&self) -> String {
        format!("{}{INTROSPECTION_PATH}", self.base_url)
    }

    /// The RFC 7009 revocation endpoint (form `token=<jwt>`, the same client credentials).
    pub fn revocation_url(&self) -> String {
        format!("{}{REVOCATION_PATH}", self.base_url)
    }

    pub fn client_id(&self) -> &str {
        self.client.id()
    }

    pub fn client_secret(&self) -> &str {
        self.client.secret().expose()
    }

    /// The shared issuer this provider serves (its revocations are every provider's).
    pub fn issuer(&self) -> &'static Arc<Issuer> {
        issuer()
    }

    /// Introspection requests this server has received, including those answered 503
    /// while down or 401 for wrong client credentials.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// `false`: every request is answered 503, as an identity provider that is down.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
    }

    /// Revokes `token` at the identity provider: introspection calls it inactive from now
    /// on. The token must come from the shared issuer (`test_app::mint`, `TestApp::token`).
    pub fn revoke(&self, token: &str) {
        issuer()
            .revoke(token)
            .expect("the revoked token was minted by the shared test issuer, with a jti");
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_app::mint;
    use dev_issuer::TokenRequest;
    use serde_json::{Value, json};

    async fn introspect(provider: &IdentityProvider, token: &str) -> (u16, Option<Value>) {
        let response = reqwest::Client::new()
            .post(provider.introspection_url())
            .basic_auth(provider.client_id(), Some(provider.client_secret()))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.ok())
    }

    #[tokio::test]
    async fn it_counts_its_own_calls_goes_down_and_revokes() {
        let (provider, other) = (
            IdentityProvider::start().await.unwrap(),
            IdentityProvider::start().await.unwrap(),
        );
        let token = mint(TokenRequest {
            sub: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        });
        let (status, answer) = introspect(&provider, &token).await;
        assert_eq!(
            (status, answer.unwrap()["active"].clone()),
            (200, json!(true))
        );

        provider.set_up(false);
        assert_eq!(introspect(&provider, &token).await, (503, None));
        provider.set_up(true);

        provider.revoke(&token);
        let (status, answer) = introspect(&provider, &token).await;
        assert_eq!((status, answer), (200, Some(json!({"active": false}))));
        assert_eq!((provider.calls(), other.calls()), (3, 0));
    }
}
