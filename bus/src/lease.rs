//! One active instance at a time: a lease the consumer holds while it is the one (a
//! Postgres session advisory lock, `events::leader`), proven at a steady pace so that
//! its session never idles out while it works.
//!
//! Everything the holder does relies on the lease only between two proofs: when one
//! fails the lease may be gone (another instance may hold it soon), so the holder stops
//! and starts over from [`Lease::acquire`].

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a lease is and how it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// The advisory lock's key.
    pub key: i64,
    /// How often a waiting instance tries to take the lease, and the holder proves it
    /// still holds it.
    pub poll: Duration,
    /// How long the holder's session may stay silent before Postgres ends it (and the
    /// lease with it): longer than `poll`.
    pub idle: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("cannot take the lease")]
    Acquire(#[source] sqlx::Error),
    #[error("the lease may be lost: its session failed")]
    Lost(#[source] sqlx::Error),
}

/// A lease held: the session that holds the lock. Dropping it closes the session, which
/// frees the lock.
pub struct Lease {
    session: PgConnection,
    terms: Terms,
    proven: Instant,
}

impl Lease {
    /// Waits until this instance holds the lease (`Some`), or until `stop` (`None`). The
    /// lock's session is a connection of its own, taken out of `pool`.
    pub async fn acquire(
        pool: &PgPool,
        terms: Terms,
        stop: &CancellationToken,
    ) -> Result<Option<Self>, LeaseError> {
        let mut session = pool.acquire().await.map_err(LeaseError::Acquire)?.detach();
        let held = events::leader::acquire(&mut session, terms.key, terms.idle, terms.poll, stop)
            .await
            .map_err(LeaseError::Acquire)?;
        Ok(held.then(|| Self {
            session,
            terms,
            proven: Instant::now(),
        }))
    }

    /// Proves the lease is still held (and keeps its session from idling out).
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        sqlx::query("SELECT 1")
            .execute(&mut self.session)
            .await
            .map_err(LeaseError::Lost)?;
        self.proven = Instant::now();
        Ok(())
    }

    /// Renews once a poll interval has passed since the last proof.
    pub async fn renew_if_due(&mut self) -> Result<(), LeaseError> {
        if self.renewal_due_in().is_zero() {
            self.renew().await?;
        }
        Ok(())
    }

    /// How long until the next proof is due (zero: now).
    pub fn renewal_due_in(&self) -> Duration {
        (self.proven + self.terms.poll).saturating_duration_since(Instant::now())
    }
}
