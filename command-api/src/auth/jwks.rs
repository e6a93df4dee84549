//! The identity provider's signing keys: fetched from `KEEL_JWKS_URL`, cached, refreshed
//! in the background, and refetched on an unknown `kid` at most once per cooldown.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// A signing key usable for verification.
#[derive(Clone)]
pub struct SigningKey {
    pub decoding: DecodingKey,
    /// The `alg` the JWKS pins this key to, if any.
    pub alg: Option<Algorithm>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching the JWKS failed")]
    Http(#[source] reqwest::Error),
    #[error("the JWKS document is not JSON of the expected shape")]
    Shape(#[source] reqwest::Error),
    #[error("the JWKS document holds no usable signing key; keeping the cached keys")]
    NoUsableKey,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

/// Keeps only keys that may verify signatures: `use` absent or `sig` (Keycloak's JWKS
/// also lists an encryption key), of a type Keel verifies (RSA, EC). A key that does
/// not parse is skipped, not fatal.
fn signing_keys(document: Document) -> HashMap<String, SigningKey> {
    let mut keys = HashMap::new();
    for value in document.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let (Some(kid), true) = (
            jwk.common.key_id.clone(),
            matches!(
                jwk.common.public_key_use,
                None | Some(PublicKeyUse::Signature)
            ),
        ) else {
            continue;
        };
        if !matches!(
            jwk.algorithm,
            AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
        ) {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match ka.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                // An encryption algorithm (RSA-OAEP…): not a signing key.
                Err(_) => continue,
            },
        };
        if let Ok(decoding) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, SigningKey { decoding, alg });
        }
    }
    keys
}

pub struct KeySet {
    url: String,
    client: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, SigningKey>>>,
    /// Serializes on-demand refetches (single flight) and remembers when the last one
    /// started. Background refreshes do not count: a key rotated in just after one
    /// must still be fetched when its first token arrives.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    cooldown: Duration,
}

impl KeySet {
    pub fn new(url: String, cooldown: Duration) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(FetchError::Http)?;
        Ok(Self {
            url,
            client,
            keys: RwLock::new(Arc::new(HashMap::new())),
            last_refetch: tokio::sync::Mutex::new(None),
            cooldown,
        })
    }

    fn cached(&self, kid: &str) -> Option<SigningKey> {
        let keys = match self.keys.read() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        keys.get(kid).cloned()
    }

    /// The key for `kid`; an unknown kid refetches the JWKS unless another fetch
    /// happened within the cooldown. Concurrent callers share one fetch.
    pub async fn key(&self, kid: &str) -> Option<SigningKey> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        let mut last = self.last_refetch.lock().await;
        // Another request may have fetched while this one waited.
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        if last.is_some_and(|at| at.elapsed() < self.cooldown) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(error) = self.fetch().await {
            tracing::warn!(error = %error, "jwks refetch for an unknown kid failed");
        }
        self.cached(kid)
    }

    /// Fetches now (start-up and background refresh). On failure, or when the document
    /// holds no usable key (an identity provider mid-misconfiguration), the cached keys
    /// stay.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        self.fetch().await
    }

    async fn fetch(&self) -> Result<usize, FetchError> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(FetchError::Http)?;
        let document: Document = response.json().await.map_err(FetchError::Shape)?;
        let keys = signing_keys(document);
        if keys.is_empty() {
            return Err(FetchError::NoUsableKey);
        }
        let count = keys.len();
        let mut slot = match self.keys.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        *slot = Arc::new(keys);
        tracing::info!(keys = count, "jwks fetched");
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_and_unparseable_keys_are_skipped() {
        let document: Document = serde_json::from_value(serde_json::json!({"keys": [
            {"kid": "enc", "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "sXch", "e": "AQAB"},
            {"kid": "weird", "kty": "OKP", "crv": "Nope"},
            {"kid": "sig", "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}))
        .unwrap();
        let keys = signing_keys(document);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["sig"]);
        assert_eq!(keys["sig"].alg, Some(Algorithm::ES256));
    }
}
