//! The limit on failed service-key attempts per client IP: past 20 a minute, the IP gets
//! 429 with `Retry-After`, whatever it presents, until the limiter lets it try again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock, Reference};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// Failures an IP may make in a minute (as a burst; one more every 3 s after it).
pub const FAILURES_PER_MINUTE: NonZeroU32 = NonZeroU32::new(20).expect("20 is not zero");

type Instant = <DefaultClock as Clock>::Instant;

/// Successes are never counted. Governor has no way to ask whether a key is limited
/// without spending a cell, so the refusals' end times are kept beside it.
pub struct FailedAttempts {
    failures: DefaultKeyedRateLimiter<IpAddr>,
    limited_until: Mutex<HashMap<IpAddr, Instant>>,
}

impl Default for FailedAttempts {
    fn default() -> Self {
        Self {
            failures: RateLimiter::keyed(Quota::per_minute(FAILURES_PER_MINUTE)),
            limited_until: Mutex::default(),
        }
    }
}

impl FailedAttempts {
    /// 429 while `ip` is limited.
    pub fn ensure_allowed(&self, ip: IpAddr) -> Result<(), ApiError> {
        let now = self.failures.clock().now();
        let limited = self
            .limited_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match limited.get(&ip) {
            Some(&until) if until > now => Err(too_many(until.duration_since(now).into())),
            _ => Ok(()),
        }
    }

    /// Counts a failure of `ip`: 429 when it is one too many.
    pub fn record_failure(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.failures.check_key(&ip).map_err(|not_until| {
            let now = self.failures.clock().now();
            self.limited_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ip, not_until.earliest_possible());
            tracing::warn!(ip = %ip, "too many failed service-key attempts; limited");
            too_many(not_until.wait_time_from(now))
        })
    }

    /// Forgets IPs that are not limited any more, so the maps stay small.
    pub fn forget_idle(&self) {
        let now = self.failures.clock().now();
        self.limited_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, until| *until > now);
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
    }
}

fn too_many(wait: std::time::Duration) -> ApiError {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::TooManyKeyFailures {
        retry_after_secs: u32::try_from(secs).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(result: Result<(), ApiError>) -> u16 {
        result.err().map_or(200, |error| error.status().as_u16())
    }

    #[test]
    fn the_twenty_first_failure_in_a_minute_is_limited_and_so_is_that_ip() {
        let attempts = FailedAttempts::default();
        let ip = IpAddr::from([10, 0, 0, 1]);
        for n in 1..=20 {
            assert_eq!(status(attempts.record_failure(ip)), 200, "failure {n}");
            assert_eq!(
                status(attempts.ensure_allowed(ip)),
                200,
                "after failure {n}"
            );
        }
        assert_eq!(status(attempts.record_failure(ip)), 429);
        assert_eq!(status(attempts.ensure_allowed(ip)), 429);
        let other = IpAddr::from([10, 0, 0, 2]);
        assert_eq!(status(attempts.ensure_allowed(other)), 200);
        assert_eq!(status(attempts.record_failure(other)), 200);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let ApiError::TooManyKeyFailures { retry_after_secs } =
            too_many(std::time::Duration::from_millis(2001))
        else {
            panic!("not a 429");
        };
        assert_eq!(retry_after_secs, 3);
    }
}
