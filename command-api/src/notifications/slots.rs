//! The socket limits of one instance: at most `KEEL_WS_MAX_PER_USER` open sockets per
//! user (the next handshake gets 429) and `KEEL_WS_MAX_SOCKETS` in all (503). A slot is
//! taken before the 101 and given back when the socket ends, so concurrent handshakes
//! cannot overshoot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::ApiError;
use domain::ids::UserId;

/// What a client is told to wait before trying again.
const RETRY_AFTER_SECS: u32 = 5;

pub struct Slots {
    per_user: usize,
    total: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_user: HashMap<UserId, usize>,
}

/// One open (or opening) socket's place; given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    user: UserId,
}

impl Slots {
    pub fn new(per_user: usize, total: usize) -> Self {
        Self {
            per_user,
            total,
            open: Mutex::new(Open::default()),
        }
    }

    fn open(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more socket of `user`: 429 past the user's limit, 503 past the
    /// instance's.
    pub fn take(self: &Arc<Self>, user: UserId) -> Result<Slot, ApiError> {
        let mut open = self.open();
        let mine = open.per_user.get(&user).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(ApiError::TooManyRequests {
                limit: "this user has as many notification sockets open as it may",
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        if open.total >= self.total {
            return Err(ApiError::AtCapacity {
                limit: "this instance has as many notification sockets open as it may",
                retry_after_secs: RETRY_AFTER_SECS,
            });
        }
        open.total += 1;
        open.per_user.insert(user, mine + 1);
        Ok(Slot {
            slots: self.clone(),
            user,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open();
        open.total = open.total.saturating_sub(1);
        if let Some(mine) = open.per_user.get_mut(&self.user) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                open.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_per_user_and_in_all_and_given_back() {
        let slots = Arc::new(Slots::new(2, 3));
        let (alice, bob) = (UserId(uuid::Uuid::new_v4()), UserId(uuid::Uuid::new_v4()));
        let first = slots.take(alice).expect("first");
        let _second = slots.take(alice).expect("second");
        let refused = slots.take(alice).err().expect("third of one user");
        assert_eq!(refused.status(), 429);
        let _bobs = slots.take(bob).expect("bob's first");
        let full = slots.take(bob).err().expect("the instance is full");
        assert_eq!(full.status(), 503);
        drop(first);
        assert!(
            slots.take(alice).is_ok(),
            "a closed socket gives its slot back"
        );
    }
}
