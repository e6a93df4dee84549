//! What the publisher reports while it runs: whether it leads, and how many events
//! JetStream acknowledged. The host process exports it (command-api's `/metrics`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared between the publisher, which updates it, and whoever reads it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Events this instance published and JetStream acknowledged.
    published: AtomicU64,
    /// Whether this instance is the active publisher.
    leader: AtomicBool,
}

impl Progress {
    pub fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Events this instance published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Whether this instance is the active publisher now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_handle_neither_leads_nor_has_published() {
        let progress = Progress::default();
        assert!(!progress.is_leader());
        assert_eq!(progress.published(), 0);
    }

    #[test]
    fn published_events_add_up_and_leadership_follows_the_last_change() {
        let progress = Progress::default();
        progress.add_published(3);
        progress.add_published(4);
        progress.set_leader(true);
        assert!(progress.is_leader());
        progress.set_leader(false);
        assert!(!progress.is_leader());
        assert_eq!(progress.published(), 7);
    }
}
