//! Service-to-service callers of `/internal/*`: `X-Api-Key` must be one of
//! `KEEL_SERVICE_KEYS`, compared in constant time. A user's bearer token never counts.

use axum::extract::FromRequestParts;
use axum::http::HeaderName;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::config::ServiceKeys;
use crate::error::ApiError;
use crate::state::AppState;

pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The SHA-256 of each accepted key. Comparing digests makes every comparison the same
/// length whatever was sent, so its time tells nothing about any key.
pub struct ServiceKeyDigests(Vec<[u8; 32]>);

impl ServiceKeyDigests {
    pub fn new(keys: &ServiceKeys) -> Self {
        Self(
            keys.keys()
                .iter()
                .map(|key| digest(key.as_bytes()))
                .collect(),
        )
    }

    /// Whether `presented` is one of the keys. Every key is compared, byte by byte,
    /// without stopping early; no keys configured accepts nothing.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        self.0.iter().fold(false, |found, accepted| {
            let difference = accepted
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            found | (difference == 0)
        })
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Proof that the request carried an accepted service key.
#[derive(Debug, Clone, Copy)]
pub struct ServiceCaller;

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(&X_API_KEY)
            .ok_or(ApiError::ServiceKeyRejected)?;
        if state.service_keys.accepts(presented.as_bytes()) {
            Ok(Self)
        } else {
            tracing::warn!("internal request with a wrong service key");
            Err(ApiError::ServiceKeyRejected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_configured_key_is_accepted_and_nothing_else() {
        let digests = ServiceKeyDigests::new(&"old-key, new-key".parse().unwrap());
        assert!(digests.accepts(b"old-key"));
        assert!(digests.accepts(b"new-key"));
        assert!(!digests.accepts(b"new-ke"));
        assert!(!digests.accepts(b"new-key "));
        assert!(!digests.accepts(b""));
    }

    #[test]
    fn without_configured_keys_nothing_is_accepted() {
        let digests = ServiceKeyDigests::new(&"".parse().unwrap());
        assert!(!digests.accepts(b""));
        assert!(!digests.accepts(b"anything"));
    }
}
