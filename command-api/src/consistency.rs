//! Reading one's writes: `X-Min-Position` makes a query wait, bounded, until the read
//! models behind it have applied that log position; and consistent snapshots of them.

use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use sqlx::{PgPool, Postgres, Transaction};

use tokio::sync::OwnedSemaphorePermit;

use crate::error::{ApiError, FieldError};
use crate::state::AppState;
use domain::ids::Position;
use events::event_log;
use events::read_model::{self, Projection};

pub static X_MIN_POSITION: HeaderName = HeaderName::from_static("x-min-position");

/// Longest a query waits for its read models to reach `X-Min-Position`.
pub const WAIT_BOUND: Duration = Duration::from_secs(5);
/// Pause between two checks of how far the read models got.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// What a 503 tells the client to wait before asking again.
const RETRY_AFTER_SECS: u32 = 1;

/// The position a query must reflect: the request's `X-Min-Position`, if it sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinPosition(pub Option<Position>);

impl<S: Send + Sync> FromRequestParts<S> for MinPosition {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Self::from_headers(&parts.headers)
    }
}

impl MinPosition {
    /// The request's `X-Min-Position`, checked: a non-negative integer.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(&X_MIN_POSITION) else {
            return Ok(Self(None));
        };
        value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<i64>().ok())
            .map(|p| Self(Some(Position(p))))
            .ok_or_else(|| {
                ApiError::invalid(vec![FieldError::new(
                    "X-Min-Position",
                    "must be a non-negative integer (a log position)",
                )])
            })
    }

    /// The requested position, or 0 (nothing to wait for) without the header.
    pub fn position(self) -> Position {
        self.0.unwrap_or_default()
    }

    /// Returns once every one of `projections` has applied the log through the requested
    /// position (at once without the header); 503 when that takes longer than
    /// [`WAIT_BOUND`]. A position beyond the log's head is 422 at once (no command
    /// returned it), and so is a wait past `KEEL_MAX_POSITION_WAITERS` (503).
    pub async fn wait(self, state: &AppState, projections: &[Projection]) -> Result<(), ApiError> {
        let Some(position) = self.0 else {
            return Ok(());
        };
        let pool = &state.pool;
        let started = Instant::now();
        let mut behind = projections.to_vec();
        let mut waiting = None;
        loop {
            let mut still_behind = Vec::with_capacity(behind.len());
            for projection in behind {
                let applied =
                    read_model::applied_through(pool, projection, projection.schema(), position)
                        .await
                        .map_err(ApiError::internal)?;
                if !applied {
                    still_behind.push(projection);
                }
            }
            behind = still_behind;
            let Some(first) = behind.first() else {
                return Ok(());
            };
            if waiting.is_none() {
                waiting = Some(start_waiting(state, position).await?);
            }
            if started.elapsed() >= WAIT_BOUND {
                tracing::warn!(
                    position = position.0,
                    projection = %first,
                    "read model not at the requested position in time"
                );
                return Err(ApiError::NotYetApplied {
                    position,
                    retry_after_secs: RETRY_AFTER_SECS,
                });
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Checks that `position` is in the log and takes a waiter's place.
async fn start_waiting(
    state: &AppState,
    position: Position,
) -> Result<OwnedSemaphorePermit, ApiError> {
    let head = event_log::head(&state.pool)
        .await
        .map_err(ApiError::internal)?;
    if position > head {
        return Err(ApiError::invalid(vec![FieldError::new(
            "X-Min-Position",
            format!("is beyond the log's head ({})", head.0),
        )]));
    }
    state
        .position_waiters
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::AtCapacity {
            limit: "too many queries are waiting for X-Min-Position on this instance",
            retry_after_secs: RETRY_AFTER_SECS,
        })
}

/// A read-only transaction over one snapshot of `tables`, so that a response assembled
/// from several queries never mixes two states of the read models. The tables are locked
/// (shared) before the snapshot is taken: a rebuild that is swapping a model in holds
/// them exclusively, so the snapshot comes after its swap (the new model, complete), never
/// before it with the reads after it (the new model without the swap's last events).
pub async fn snapshot(
    pool: &PgPool,
    tables: &[String],
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut transaction = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *transaction)
        .await?;
    // LOCK takes no snapshot; the first SELECT after it does. Tables are locked in byte
    // order, as the rebuild's swap does, so the two never deadlock.
    let mut tables = tables.to_vec();
    tables.sort();
    sqlx::query(&format!(
        "LOCK TABLE {} IN ACCESS SHARE MODE",
        tables.join(", ")
    ))
    .execute(&mut *transaction)
    .await?;
    Ok(transaction)
}
