//! A JWKS endpoint for tests: serves the dev issuer's keys (or any document a test sets)
//! and counts how often it is fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use dev_issuer::Issuer;

/// One issuer (fresh keys) per test binary: generating RSA keys is slow. An `Arc`, so an
/// [`IdentityProvider`](crate::identity_provider::IdentityProvider) can serve it too.
pub fn issuer() -> &'static Arc<Issuer> {
    static ISSUER: LazyLock<Arc<Issuer>> = LazyLock::new(|| {
        Arc::new(
            Issuer::generate("http://keel-tests.invalid/realms/keel")
                .expect("the dev issuer generates its keys"),
        )
    });
    &ISSUER
}

#[derive(Clone)]
struct Shared {
    document: Arc<RwLock<serde_json::Value>>,
    fetches: Arc<AtomicUsize>,
    up: Arc<std::sync::atomic::AtomicBool>,
}

pub struct JwksServer {
    pub url: String,
    shared: Shared,
}

async fn serve_jwks(State(shared): State<Shared>) -> axum::response::Response {
    use axum::response::IntoResponse;
    shared.fetches.fetch_add(1, Ordering::SeqCst);
    if !shared.up.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let document = shared
        .document
        .read()
        .map(|d| d.clone())
        .unwrap_or_default();
    axum::Json(document).into_response()
}

impl JwksServer {
    /// Serves the shared issuer's JWKS on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        let shared = Shared {
            document: Arc::new(RwLock::new(issuer().jwks())),
            fetches: Arc::new(AtomicUsize::new(0)),
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        };
        let router = Router::new()
            .route("/certs", get(serve_jwks))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let url = format!("http://{}/certs", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self { url, shared })
    }

    pub fn fetches(&self) -> usize {
        self.shared.fetches.load(Ordering::SeqCst)
    }

    /// Replaces the served document (e.g. to add or rotate keys).
    pub fn set_document(&self, document: serde_json::Value) {
        if let Ok(mut slot) = self.shared.document.write() {
            *slot = document;
        }
    }

    /// Makes the endpoint answer 503, as an identity provider that is down.
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
    }
}
