//! Live authorization: what a verified token may do *now*, whatever it says.
//!
//! Every instance keeps, in memory, what authorization needs beyond the token: each
//! user's roles and standing in Keel and the cut-off of its revoked tokens (loaded from
//! the log on first use), and every revoked `jti` still in force (loaded at start). The
//! log is the only truth; the cache follows it in two ways:
//!
//! - **The tail.** A background task reads the log's policy events (a partial index, see
//!   `events::policy`) after the last one it applied, every [`TAIL_EVERY`] and at once
//!   when woken, and evicts or updates what they change. Positions become visible in
//!   order, so it never skips one. A successful read *confirms* the cache: past
//!   [`STALE_AFTER`] without one (Postgres away), an admin token is refused with 503
//!   rather than trusted on a cache that may be stale.
//! - **Invalidation.** `policy.invalidate.<user_id>` / `policy.invalidate.all` on Redis
//!   (published by the projectors when they apply a policy event, or by an operator)
//!   evict at once and wake the tail. A lost message, or Redis down, costs at most one
//!   tail period; Redis losing its data costs nothing (nothing here lives in Redis).
//!
//! **A stale refill never undoes a change.** A user's policy is loaded with the log
//! position of its snapshot, and cached only if the tail has not applied any policy
//! event past that position meanwhile: a load that read the old state and lands after
//! the tail evicted the user is used for its one request and dropped (see
//! [`CachedPolicy`]).

mod cached;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::auth::{LEEWAY_SECS, Principal, now};
use crate::error::ApiError;
use domain::ids::UserId;
use events::policy::{self, Invalidation, Revocation, UserPolicy};

pub use cached::{Applied, CachedPolicy};

/// How often the tail reads the log even when nothing woke it.
pub const TAIL_EVERY: Duration = Duration::from_millis(500);
/// Longest the cache is trusted for admin tokens without a successful read of the log.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Users whose policy is kept; past this the cache starts over.
pub const CAPACITY: usize = 100_000;
/// Policy events read per query by the tail.
const PAGE: i64 = 1000;
/// Changes the hub has not taken yet before it must recheck every socket.
const CHANGES: usize = 1024;

/// What a policy event changed, for whoever enforces it on long-lived connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    User(UserId),
    Token(Arc<str>),
}

/// Where a principal stands, before its roles are looked at.
enum Standing {
    Revoked,
    Deactivated,
    Allowed(Arc<UserPolicy>),
}

/// The authorization state of this instance.
pub struct Policy {
    pool: PgPool,
    cache: Mutex<CachedPolicy>,
    /// When the tail last read the log successfully.
    confirmed: Mutex<Instant>,
    /// One tail at a time.
    tailing: tokio::sync::Mutex<()>,
    wake: Notify,
    changes: broadcast::Sender<Change>,
}

impl Policy {
    /// Reads the revoked tokens in force and the log's head, in one snapshot.
    pub async fn load(pool: PgPool) -> Result<Self, policy::ReadError> {
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let head = events::event_log::head(&mut *tx).await?;
        let now = now();
        let revoked = policy::revocations_in_force(&mut *tx, now, LEEWAY_SECS as i64)
            .await?
            .into_iter()
            .filter_map(|r| match r.revocation {
                Revocation::Token { jti, expires_at } => Some((jti, expires_at)),
                Revocation::User { .. } => None,
            });
        let cache = CachedPolicy::new(head, revoked);
        tx.commit().await?;
        Ok(Self {
            pool,
            cache: Mutex::new(cache),
            confirmed: Mutex::new(Instant::now()),
            tailing: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            changes: broadcast::channel(CHANGES).0,
        })
    }

    fn cache(&self) -> MutexGuard<'_, CachedPolicy> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The changes the tail applies, as they are applied.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Where `principal` stands now: its token or user revoked, its user deactivated, or
    /// allowed as the user's policy says.
    async fn standing(&self, principal: &Principal) -> Result<Standing, ApiError> {
        if principal
            .jti
            .as_deref()
            .is_some_and(|jti| self.cache().is_revoked(jti))
        {
            return Ok(Standing::Revoked);
        }
        let user = self.user(principal.user_id).await?;
        Ok(if user.refuses_issued_at(principal.issued_at) {
            Standing::Revoked
        } else if user.registered && !user.active {
            Standing::Deactivated
        } else {
            Standing::Allowed(user)
        })
    }

    /// What Keel allows `principal` (a verified token) now: 401 for a revoked token, 403
    /// for a deactivated user, the token's roles cut down to the user's roles in Keel,
    /// and 503 for an admin while the cache cannot be confirmed.
    pub async fn authorize(&self, mut principal: Principal) -> Result<Principal, ApiError> {
        let user = match self.standing(&principal).await? {
            Standing::Revoked => return Err(ApiError::Unauthorized("token revoked".to_owned())),
            Standing::Deactivated => {
                return Err(ApiError::Forbidden(
                    "your account is deactivated".to_owned(),
                ));
            }
            Standing::Allowed(user) => user,
        };
        principal.roles.retain(|role| user.grants(role));
        principal.registered = user.registered;
        if principal.is_admin() && self.is_stale() {
            return Err(ApiError::Unavailable {
                dependency: "postgres",
                retry_after_secs: 1,
            });
        }
        Ok(principal)
    }

    /// Whether a connection opened by `principal` must end now (its token revoked, its
    /// user deactivated or cut off).
    pub async fn revokes(&self, principal: &Principal) -> Result<bool, ApiError> {
        Ok(!matches!(
            self.standing(principal).await?,
            Standing::Allowed(_)
        ))
    }

    /// `user`'s policy, from the cache or the log.
    pub async fn user(&self, user: UserId) -> Result<Arc<UserPolicy>, ApiError> {
        if let Some(policy) = self.cache().user(user) {
            return Ok(policy);
        }
        let (as_of, policy) = policy::load_user(&self.pool, user).await.map_err(|error| {
            tracing::warn!(error = %error, "reading a user's policy failed");
            ApiError::Unavailable {
                dependency: "postgres",
                retry_after_secs: 1,
            }
        })?;
        let policy = Arc::new(policy);
        self.cache().insert(user, policy.clone(), as_of);
        Ok(policy)
    }

    fn is_stale(&self) -> bool {
        self.confirmed
            .lock()
            .map_or(true, |confirmed| confirmed.elapsed() > STALE_AFTER)
    }

    /// Reads the log at once (on the tail's task).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Evicts what `invalidation` names and reads the log at once.
    pub fn invalidate(&self, invalidation: Invalidation) {
        self.cache().evict(invalidation);
        self.wake();
    }

    /// Applies every policy event the log holds after the last one applied. Returns how
    /// many it applied.
    pub async fn catch_up(&self) -> Result<usize, sqlx::Error> {
        let _one_at_a_time = self.tailing.lock().await;
        let mut total = 0;
        loop {
            let after = self.cache().applied();
            let page = policy::events_after(&self.pool, after, PAGE).await?;
            let read = page.len();
            for recorded in page {
                let applied = match recorded.decode() {
                    Ok(event) => Applied::of(&event),
                    Err(error) => {
                        tracing::error!(
                            error = %error,
                            position = recorded.position.0,
                            "a policy event cannot be decoded; skipped"
                        );
                        Applied::Nothing
                    }
                };
                self.cache().apply(recorded.position, &applied);
                if let Some(change) = applied.change() {
                    // Nobody listening (no hub yet) is fine.
                    let _ = self.changes.send(change);
                }
            }
            total += read;
            if read < PAGE as usize {
                break;
            }
        }
        if let Ok(mut confirmed) = self.confirmed.lock() {
            *confirmed = Instant::now();
        }
        Ok(total)
    }

    /// Tails the log until `stop`: every [`TAIL_EVERY`], and at once when woken.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TAIL_EVERY) => {}
            }
            match self.catch_up().await {
                Ok(0) => {}
                Ok(applied) => tracing::debug!(applied, "policy events applied"),
                Err(error) => tracing::warn!(error = %error, "reading policy events failed"),
            }
            self.cache().prune(now());
        }
    }
}
