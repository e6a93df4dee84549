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
//! the tail evicted the user is used for its one request and dropped (see [`Cache`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::auth::{LEEWAY_SECS, Principal};
use crate::error::ApiError;
use events::domain::{Event, TokenEvent};
use events::ids::{Position, UserId};
use events::policy::{self, Invalidation, Revocation, UserPolicy};

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

/// The cached policy and how far into the log it reflects.
#[derive(Debug, Default)]
pub struct Cache {
    users: HashMap<UserId, Arc<UserPolicy>>,
    /// Revoked `jti` -> until when (Unix seconds).
    revoked: HashMap<Arc<str>, i64>,
    /// The position of the last policy event applied (or the log's head when the cache
    /// was filled): every policy event at or below it is reflected.
    applied: Position,
}

impl Cache {
    /// A cache that reflects the log up to `head`, with the revoked tokens as of then.
    pub fn new(head: Position, revoked: impl IntoIterator<Item = (String, i64)>) -> Self {
        Self {
            users: HashMap::new(),
            revoked: revoked
                .into_iter()
                .map(|(jti, until)| (Arc::from(jti), until))
                .collect(),
            applied: head,
        }
    }

    pub fn user(&self, user: UserId) -> Option<Arc<UserPolicy>> {
        self.users.get(&user).cloned()
    }

    /// Caches `policy`, read from a snapshot of the log at `as_of`, unless a policy
    /// event after `as_of` has been applied since (it may concern this user: the read is
    /// stale). Whether it was cached.
    pub fn insert(&mut self, user: UserId, policy: Arc<UserPolicy>, as_of: Position) -> bool {
        if as_of < self.applied {
            return false;
        }
        if self.users.len() >= CAPACITY {
            self.users.clear();
        }
        self.users.insert(user, policy);
        true
    }

    /// Applies the policy event at `position`.
    pub fn apply(&mut self, position: Position, change: &Applied) {
        match change {
            Applied::User(user) => {
                self.users.remove(user);
            }
            Applied::Token { jti, until } => {
                let entry = self.revoked.entry(jti.clone()).or_insert(*until);
                *entry = (*entry).max(*until);
            }
            Applied::Nothing => {}
        }
        self.applied = self.applied.max(position);
    }

    pub fn evict(&mut self, invalidation: Invalidation) {
        match invalidation {
            Invalidation::User(user) => {
                self.users.remove(&user);
            }
            Invalidation::All => self.users.clear(),
        }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.contains_key(jti)
    }

    /// Forgets revocations of tokens that can no longer pass anyway.
    pub fn prune(&mut self, now: i64) {
        self.revoked
            .retain(|_, until| *until + LEEWAY_SECS as i64 > now);
    }

    pub fn applied(&self) -> Position {
        self.applied
    }
}

/// One policy event, as the cache applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    User(UserId),
    Token {
        jti: Arc<str>,
        until: i64,
    },
    /// Not a policy event (or one this code cannot read: logged).
    Nothing,
}

impl Applied {
    fn of(event: &Event) -> Self {
        match event {
            Event::User(e) => Applied::User(e.user_id()),
            Event::Token(TokenEvent::Revoked(e)) => Applied::Token {
                jti: Arc::from(e.jti.as_str()),
                until: e.expires_at,
            },
            Event::Post(_) => Applied::Nothing,
        }
    }

    fn change(&self) -> Option<Change> {
        match self {
            Applied::User(user) => Some(Change::User(*user)),
            Applied::Token { jti, .. } => Some(Change::Token(jti.clone())),
            Applied::Nothing => None,
        }
    }
}

/// The authorization state of this instance.
pub struct Policy {
    pool: PgPool,
    cache: Mutex<Cache>,
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
        let cache = Cache::new(head, revoked);
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

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The changes the tail applies, as they are applied.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// What Keel allows `principal` (a verified token) now: 401 for a revoked token, 403
    /// for a deactivated user, the token's roles cut down to the user's roles in Keel,
    /// and 503 for an admin while the cache cannot be confirmed.
    pub async fn authorize(&self, mut principal: Principal) -> Result<Principal, ApiError> {
        if principal
            .jti
            .as_deref()
            .is_some_and(|jti| self.cache().is_revoked(jti))
        {
            return Err(ApiError::Unauthorized("token revoked".to_owned()));
        }
        let user = self.user(principal.user_id).await?;
        if user.refuses_issued_at(principal.issued_at) {
            return Err(ApiError::Unauthorized("token revoked".to_owned()));
        }
        if user.registered && !user.active {
            return Err(ApiError::Forbidden(
                "your account is deactivated".to_owned(),
            ));
        }
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
        if principal
            .jti
            .as_deref()
            .is_some_and(|jti| self.cache().is_revoked(jti))
        {
            return Ok(true);
        }
        let user = self.user(principal.user_id).await?;
        Ok(user.refuses_issued_at(principal.issued_at) || (user.registered && !user.active))
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
        self.wake.notify_one();
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

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::domain::Role;

    fn admin() -> Arc<UserPolicy> {
        Arc::new(UserPolicy {
            registered: true,
            active: true,
            roles: vec![Role::Admin, Role::User],
            tokens_issued_up_to: None,
        })
    }

    #[test]
    fn a_read_older_than_an_applied_event_is_not_cached() {
        let user = UserId::new();
        let mut cache = Cache::new(Position(10), []);
        // A request read the user at position 12; meanwhile the tail applied a demotion
        // at 13 (evicting nothing yet cached). The old read must not be cached.
        cache.apply(Position(13), &Applied::User(user));
        assert!(!cache.insert(user, admin(), Position(12)));
        assert_eq!(cache.user(user), None);
        // A read that saw the demotion is.
        assert!(cache.insert(user, admin(), Position(13)));
        assert!(cache.user(user).is_some());
    }

    #[test]
    fn revoked_tokens_stay_revoked_until_their_expiry() {
        let mut cache = Cache::new(Position(0), [("a".to_owned(), 100)]);
        cache.apply(
            Position(1),
            &Applied::Token {
                jti: Arc::from("b"),
                until: 200,
            },
        );
        cache.prune(100);
        assert!(cache.is_revoked("a") && cache.is_revoked("b"));
        cache.prune(100 + LEEWAY_SECS as i64);
        assert!(!cache.is_revoked("a") && cache.is_revoked("b"));
    }

    /// One step of a race between the log, the tail and requests that load a user.
    #[derive(Debug, Clone)]
    enum Step {
        /// A policy event of the user commits (the log's head moves on).
        Commit,
        /// The tail applies what has committed.
        Tail,
        /// A request reads the user from a snapshot of the log as it is now.
        Read,
        /// The `n`-th pending read (modulo) lands in the cache.
        Land(usize),
    }

    fn steps() -> impl proptest::strategy::Strategy<Value = Vec<Step>> {
        use proptest::prelude::*;
        proptest::collection::vec(
            prop_oneof![
                Just(Step::Commit),
                Just(Step::Tail),
                Just(Step::Read),
                any::<usize>().prop_map(Step::Land),
            ],
            1..60,
        )
    }

    /// The user after `n` policy events (the cut-off counts them).
    fn after(n: i64) -> Arc<UserPolicy> {
        Arc::new(UserPolicy {
            tokens_issued_up_to: Some(n),
            ..UserPolicy::default()
        })
    }

    proptest::proptest! {
        /// Whatever the interleaving, once the tail applied the user's n-th event the
        /// cache never answers with a state older than it: a stale read that lands late
        /// is not cached.
        #[test]
        fn a_stale_refill_never_undoes_an_applied_change(steps in steps()) {
            let user = UserId::new();
            let mut cache = Cache::new(Position(0), []);
            let (mut committed, mut tailed) = (0_i64, 0_i64);
            let mut reads: Vec<(Position, i64)> = Vec::new();
            for step in steps {
                match step {
                    Step::Commit => committed += 1,
                    Step::Tail => {
                        while tailed < committed {
                            tailed += 1;
                            cache.apply(Position(tailed), &Applied::User(user));
                        }
                    }
                    Step::Read => reads.push((Position(committed), committed)),
                    Step::Land(n) if !reads.is_empty() => {
                        let (as_of, seen) = reads.remove(n % reads.len());
                        cache.insert(user, after(seen), as_of);
                    }
                    Step::Land(_) => {}
                }
                if let Some(cached) = cache.user(user) {
                    let seen = cached.tokens_issued_up_to.unwrap_or(0);
                    proptest::prop_assert!(
                        seen >= tailed,
                        "cached state after {seen} events, but the tail applied {tailed}"
                    );
                }
            }
        }
    }
}
