//! RFC 7662 token introspection before sensitive operations: the identity provider says
//! whether the caller's token is still active (a token revoked there, or a session ended,
//! stops working for these operations at once, before its `exp`).
//!
//! Fails closed: the provider unreachable, slow or answering an error is 503 with
//! `Retry-After`, never a pass. An active answer is reused for at most
//! [`ACTIVE_FOR`] (and never past the token's `exp`); an inactive one is never cached.
//! One introspection runs at a time per instance, so concurrent requests with one token
//! share one call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Principal;
use crate::config::Secret;
use crate::error::ApiError;

/// Longest an active answer is reused.
pub const ACTIVE_FOR: Duration = Duration::from_secs(10);
/// Longest the provider may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Active answers remembered; past this the memory starts over.
const CAPACITY: usize = 10_000;

#[derive(Deserialize)]
struct Answer {
    active: bool,
}

pub struct Introspection {
    url: String,
    client_id: String,
    client_secret: Secret,
    http: reqwest::Client,
    /// SHA-256 of a token -> until when its active answer may be reused.
    active: std::sync::Mutex<HashMap<[u8; 32], Instant>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Introspection {
    pub fn new(
        url: String,
        client_id: String,
        client_secret: Secret,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            url,
            client_id,
            client_secret,
            http,
            active: std::sync::Mutex::new(HashMap::new()),
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    fn remembered(&self, digest: &[u8; 32]) -> bool {
        self.active
            .lock()
            .ok()
            .and_then(|active| active.get(digest).copied())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Ok when the provider says `principal`'s token is active; 401 when it says it is
    /// not; 503 when it cannot tell.
    pub async fn ensure_active(&self, principal: &Principal) -> Result<(), ApiError> {
        let token = principal.token.expose();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if self.remembered(&digest) {
            return Ok(());
        }
        let _one = self.one_at_a_time.lock().await;
        if self.remembered(&digest) {
            return Ok(());
        }
        let unavailable = ApiError::Unavailable {
            dependency: "identity provider",
            retry_after_secs: 2,
        };
        let response = self
            .http
            .post(&self.url)
            .basic_auth(&self.client_id, Some(self.client_secret.expose()))
            .form(&[("token", token)])
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        let answer = match response {
            Ok(response) => response.json::<Answer>().await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(Answer { active: true }) => {
                let left = u64::try_from(principal.expires_at - super::now()).unwrap_or(0);
                let until = Instant::now() + ACTIVE_FOR.min(Duration::from_secs(left));
                if let Ok(mut active) = self.active.lock() {
                    if active.len() >= CAPACITY {
                        active.clear();
                    }
                    active.insert(digest, until);
                }
                Ok(())
            }
            Ok(Answer { active: false }) => Err(ApiError::Unauthorized(
                "token is no longer active at the identity provider".to_owned(),
            )),
            Err(error) => {
                tracing::warn!(error = %error, "token introspection failed; refusing (fail closed)");
                Err(unavailable)
            }
        }
    }
}
