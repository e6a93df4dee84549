//! `AppState`: the handles every handler may use. Cheap to clone.

use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::Verifier;
use crate::metrics::Metrics;
use crate::writer::WriterHandle;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub writer: WriterHandle,
    pub verifier: Arc<Verifier>,
    pub nats: async_nats::Client,
    pub redis: redis::Client,
    pub metrics: Arc<Metrics>,
}
