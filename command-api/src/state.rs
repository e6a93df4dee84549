//! `AppState`: the handles every handler may use. Cheap to clone.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::auth::Verifier;
use crate::auth::introspection::Introspection;
use crate::auth::service_key::Keyring;
use crate::health::Readiness;
use crate::metrics::Metrics;
use crate::notifications::hub::Hub;
use crate::policy::Policy;
use crate::rate_limit::RateLimits;
use crate::ui_cache::UiCache;
use crate::writer::WriterHandle;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub writer: WriterHandle,
    pub verifier: Arc<Verifier>,
    /// What verified tokens may do now (revocations, roles and standing in Keel).
    pub policy: Arc<Policy>,
    /// Asked before sensitive operations, when configured.
    pub introspection: Option<Arc<Introspection>>,
    /// The keys accepted on `/internal/*`, and the limit on failed attempts.
    pub service_keys: Arc<Keyring>,
    pub nats: async_nats::Client,
    /// The UI cache (the dashboard), on Redis.
    pub ui_cache: UiCache,
    /// The JetStream stream name, which also namespaces the cache keys.
    pub stream: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// The WebSocket hub of this instance.
    pub hub: Arc<Hub>,
    /// Per principal and per client IP, checked before any handler.
    pub rate_limits: Arc<RateLimits>,
    /// `KEEL_MAX_IN_FLIGHT` permits, shared by every public route.
    pub in_flight: Arc<Semaphore>,
    /// The last `/readyz` probe, reused for up to a second.
    pub readiness: Arc<Readiness>,
    /// `KEEL_MAX_POSITION_WAITERS` permits, one per query waiting for `X-Min-Position`.
    pub position_waiters: Arc<Semaphore>,
}
