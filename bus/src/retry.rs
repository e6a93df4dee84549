//! Retrying until done or stopped, pausing longer after each failed attempt.
//!
//! ```text
//! let mut retries = retry_until(&stop, BACKOFF);
//! while let Some(attempt) = retries.next().await {
//!     match work().await {
//!         Ok(done) => return Some(done),
//!         Err(error) => tracing::warn!(attempt, error = %chain(&error), "retrying"),
//!     }
//! }
//! None // stopped
//! ```
//!
//! The loop's body decides what a failure means (log it, give up after so many, keep a
//! message alive); the pacing and the stop are here, once.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The pauses between attempts: `first`, then twice the one before, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The pause after `pause`.
    pub fn after(self, pause: Duration) -> Duration {
        pause.saturating_mul(2).min(self.max)
    }
}

/// Attempts, paced by `backoff`, until `stop`.
pub fn retry_until(stop: &CancellationToken, backoff: Backoff) -> Retries {
    Retries {
        stop: stop.clone(),
        backoff,
        pause: backoff.first,
        made: 0,
    }
}

/// The attempts of one retry loop.
#[derive(Debug)]
pub struct Retries {
    stop: CancellationToken,
    backoff: Backoff,
    pause: Duration,
    made: u32,
}

impl Retries {
    /// The next attempt's number, from 1: the first at once, each later one after its
    /// pause; `None` when the stop comes first (it is not checked before the first).
    pub async fn next(&mut self) -> Option<u32> {
        if self.made > 0 {
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(self.pause) => {}
            }
            self.pause = self.backoff.after(self.pause);
        }
        self.made = self.made.saturating_add(1);
        Some(self.made)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Backoff = Backoff {
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
    };

    #[test]
    fn pauses_double_up_to_the_most() {
        let pauses: Vec<u128> =
            std::iter::successors(Some(QUICK.first), |pause| Some(QUICK.after(*pause)))
                .take(5)
                .map(|pause| pause.as_millis())
                .collect();
        assert_eq!(pauses, [1, 2, 4, 4, 4]);
    }

    #[tokio::test]
    async fn attempts_are_numbered_from_one() {
        let mut retries = retry_until(&CancellationToken::new(), QUICK);
        let mut made = Vec::new();
        while let Some(attempt) = retries.next().await {
            made.push(attempt);
            if attempt == 3 {
                break;
            }
        }
        assert_eq!(made, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_stop_ends_the_pause_and_the_retries() {
        let stop = CancellationToken::new();
        let hour = Duration::from_secs(3600);
        let mut retries = retry_until(
            &stop,
            Backoff {
                first: hour,
                max: hour,
            },
        );
        assert_eq!(retries.next().await, Some(1));
        stop.cancel();
        assert_eq!(retries.next().await, None);
    }
}
