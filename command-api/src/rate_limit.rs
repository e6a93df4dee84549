//! Rate limits, before any handler: per principal (the token's `sub`), and per client IP
//! for requests without a valid token; GCRA (`governor`), a burst of twice the rate.
//!
//! Every limited response carries the IETF httpapi draft headers (structured fields):
//! `RateLimit-Policy: "per-principal";q=<burst>;w=2` (the burst, refilled at the rate in
//! two seconds) and `RateLimit: "per-principal";r=<remaining>;t=<seconds until full>`;
//! a refused request gets 429 with `Retry-After` and appends nothing. Idle keys are
//! forgotten every [`FORGET_IDLE_EVERY`], so the keyed state stays bounded.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::auth::{VerifiedBearer, bearer_token_in};
use crate::error::ApiError;
use crate::state::AppState;
use domain::ids::UserId;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How often keys whose bucket is full again are dropped.
pub const FORGET_IDLE_EVERY: Duration = Duration::from_secs(10);
/// Highest rate a limit takes (governor counts in nanoseconds: far past this, the interval
/// between two requests would round to nothing).
pub const MAX_RATE: u32 = 1_000_000;
/// The window of the advertised policy: a full burst refills in two seconds.
const WINDOW_SECS: u32 = 2;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One keyed limit and how it is named in the headers.
struct Limit<K: std::hash::Hash + Eq + Clone> {
    name: &'static str,
    /// The 429's detail.
    refusal: &'static str,
    rate: u32,
    limiter: Keyed<K>,
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    fn new(name: &'static str, refusal: &'static str, rate: NonZeroU32) -> Self {
        let rate = NonZeroU32::new(rate.get().min(MAX_RATE)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.get().saturating_mul(WINDOW_SECS)).unwrap_or(rate);
        Self {
            name,
            refusal,
            rate: rate.get(),
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
        }
    }

    fn burst(&self) -> u32 {
        self.rate.saturating_mul(WINDOW_SECS)
    }

    /// Takes one request from `key`'s bucket: the headers to send, or the 429.
    fn check(&self, key: &K) -> Result<Headers, Refused> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = (self.burst().saturating_sub(remaining)).div_ceil(self.rate);
                Ok(self.headers(remaining, refill))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                let secs = u32::try_from(wait.as_millis().div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1);
                Err(Refused {
                    refusal: self.refusal,
                    retry_after_secs: secs,
                    headers: self.headers(0, secs),
                })
            }
        }
    }

    fn headers(&self, remaining: u32, reset_secs: u32) -> Headers {
        Headers {
            policy: format!("\"{}\";q={};w={WINDOW_SECS}", self.name, self.burst()),
            state: format!("\"{}\";r={remaining};t={reset_secs}", self.name),
        }
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// `RateLimit-Policy` and `RateLimit` of one decision.
struct Headers {
    policy: String,
    state: String,
}

impl Headers {
    fn apply(self, response: &mut Response) {
        let headers = response.headers_mut();
        for (name, value) in [(&RATELIMIT_POLICY, self.policy), (&RATELIMIT, self.state)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// A request past its limit: the 429 to answer.
struct Refused {
    refusal: &'static str,
    retry_after_secs: u32,
    headers: Headers,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = ApiError::TooManyRequests {
            limit: self.refusal,
            retry_after_secs: self.retry_after_secs,
        }
        .into_response();
        self.headers.apply(&mut response);
        response
    }
}

/// The rate limits of this instance.
pub struct RateLimits {
    principals: Limit<UserId>,
    addresses: Limit<IpAddr>,
}

impl RateLimits {
    pub fn new(per_principal: NonZeroU32, per_address: NonZeroU32) -> Self {
        Self {
            principals: Limit::new(
                "per-principal",
                "too many requests from this principal; see Retry-After",
                per_principal,
            ),
            addresses: Limit::new(
                "per-ip",
                "too many requests without a valid token from this address; see Retry-After",
                per_address,
            ),
        }
    }

    /// Drops idle keys every [`FORGET_IDLE_EVERY`] until `stop`.
    pub async fn forget_idle(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(FORGET_IDLE_EVERY) => {}
            }
            self.principals.forget_idle();
            self.addresses.forget_idle();
        }
    }
}

/// The address a request's client is limited by (see [`address_key`]); served without
/// connection info (a test calling the router directly), one shared address for all.
pub fn client_key(extensions: &axum::http::Extensions) -> IpAddr {
    let address = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |info| info.0.ip());
    address_key(address)
}

/// The address a client is limited by: IPv4 as is, IPv6 by its /64 (one host usually
/// holds a whole /64, so single addresses would be free to rotate).
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Counts the request against its principal (a valid token) or its client address,
/// before the handler: 429 beyond the limit.
pub async fn middleware(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let verified = match bearer_token_in(request.headers()) {
        Some(token) => Some(state.verifier.verify(token).await),
        None => None,
    };
    let principal = verified
        .as_ref()
        .and_then(|v| v.as_ref().ok())
        .map(|p| p.user_id);
    if let Some(verified) = verified {
        request.extensions_mut().insert(VerifiedBearer(verified));
    }
    let limits = &state.rate_limits;
    let decision = match principal {
        Some(user_id) => limits.principals.check(&user_id),
        None => limits.addresses.check(&client_key(request.extensions())),
    };
    match decision {
        Ok(headers) => {
            let mut response = next.run(request).await;
            headers.apply(&mut response);
            response
        }
        Err(refused) => refused.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(
            address_key(mapped),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn a_burst_of_twice_the_rate_passes_then_429_with_the_draft_headers() {
        let limit = Limit::<u8>::new("per-principal", "slow down", NonZeroU32::new(5).expect("5"));
        for _ in 0..10 {
            assert!(limit.check(&1).is_ok());
        }
        let refused = limit
            .check(&1)
            .err()
            .expect("the 11th is refused")
            .into_response();
        assert_eq!(refused.status(), 429);
        let header = |name: &HeaderName| refused.headers()[name].to_str().expect("text").to_owned();
        assert_eq!(header(&RATELIMIT_POLICY), "\"per-principal\";q=10;w=2");
        assert_eq!(header(&RATELIMIT), "\"per-principal\";r=0;t=1");
        assert_eq!(refused.headers()[axum::http::header::RETRY_AFTER], "1");
        assert!(limit.check(&2).is_ok(), "another key has its own bucket");
    }
}
