//! `AppState`: the handles every handler may use. Cheap to clone.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::Verifier;
use crate::auth::introspection::Introspection;
use crate::auth::service_key::Keyring;
use crate::cache::Cache;
use crate::metrics::Metrics;
use crate::notifications::hub::Hub;
use crate::policy::Policy;
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
    pub redis: redis::Client,
    /// The UI cache (the dashboard), on `redis`.
    pub cache: Cache,
    /// The JetStream stream name, which also namespaces the cache keys.
    pub stream: Arc<str>,
    pub metrics: Arc<Metrics>,
    /// The WebSocket hub of this instance.
    pub hub: Arc<Hub>,
}
