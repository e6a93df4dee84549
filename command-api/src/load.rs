//! The bound on requests in flight on the public listener (`KEEL_MAX_IN_FLIGHT`):
//! tower's global concurrency limit behind a load shedder, so a request past the bound
//! gets 503 with `Retry-After` at once, never a place in a queue.

use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::load_shed::error::Overloaded;

use crate::error::ApiError;
use crate::state::AppState;

/// Applies the bound to every route of `router`, all sharing `permits`.
pub fn limit_in_flight(router: Router<AppState>, permits: Arc<Semaphore>) -> Router<AppState> {
    router.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(refused))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(permits)),
    )
}

async fn refused(error: tower::BoxError) -> ApiError {
    if error.is::<Overloaded>() {
        ApiError::AtCapacity {
            limit: "this instance is handling as many requests as it may; retry shortly",
            retry_after_secs: 1,
        }
    } else {
        ApiError::Internal(error)
    }
}
