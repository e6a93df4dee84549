//! The cached policy: what it holds, and the rule that keeps a stale read out of it.
//! Pure (no I/O), so every interleaving of the log, the tail and requests can be tested.

use std::collections::HashMap;
use std::sync::Arc;

use super::{CAPACITY, Change};
use crate::auth::LEEWAY_SECS;
use domain::ids::{Position, UserId};
use domain::{Event, TokenEvent};
use events::policy::{Invalidation, UserPolicy};

/// The cached policy and how far into the log it reflects.
#[derive(Debug, Default)]
pub struct CachedPolicy {
    users: HashMap<UserId, Arc<UserPolicy>>,
    /// Revoked `jti` -> until when (Unix seconds).
    revoked: HashMap<Arc<str>, i64>,
    /// The position of the last policy event applied (or the log's head when the cache
    /// was filled): every policy event at or below it is reflected.
    applied: Position,
}

impl CachedPolicy {
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
    pub(super) fn of(event: &Event) -> Self {
        match event {
            Event::User(e) => Applied::User(e.user_id()),
            Event::Token(TokenEvent::Revoked(e)) => Applied::Token {
                jti: Arc::from(e.jti.as_str()),
                until: e.expires_at,
            },
            Event::Post(_) => Applied::Nothing,
        }
    }

    pub(super) fn change(&self) -> Option<Change> {
        match self {
            Applied::User(user) => Some(Change::User(*user)),
            Applied::Token { jti, .. } => Some(Change::Token(jti.clone())),
            Applied::Nothing => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::Role;

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
        let mut cache = CachedPolicy::new(Position(10), []);
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
        let mut cache = CachedPolicy::new(Position(0), [("a".to_owned(), 100)]);
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
            let mut cache = CachedPolicy::new(Position(0), []);
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
