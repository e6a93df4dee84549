//! Who is calling: bearer JWTs verified locally against the identity provider's keys,
//! and service API keys for `/internal/*` ([`service_key`]; re-read by [`key_file`],
//! failures limited by [`key_attempts`]).
//!
//! Only the `kid` in the token header selects a key, and only from Keel's own cached
//! JWKS: `jku`, `x5u`, `jwk` and `x5c` header fields are never followed. `alg` must be
//! one Keel accepts *and* fit the selected key (so `none`, or HS256 "signed" with a
//! public key, cannot pass). `exp`, `iss`, `sub` and `aud` (one of `KEEL_JWT_AUDIENCE`)
//! are required, with their JSON types checked; `nbf` and `iat` are honoured with a
//! small leeway. A `typ` other than `Bearer` (an ID or refresh token) is refused, and so
//! is a token granting `admin` without a `jti` (it could not be revoked alone).
//!
//! A verified token is then authorized live by [`crate::policy`] (revocations, the
//! user's roles and standing in Keel); sensitive operations also ask the identity
//! provider ([`introspection`]).

pub mod introspection;
pub mod jwks;
pub mod key_attempts;
pub mod key_file;
pub mod service_key;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;
use domain::ids::UserId;
pub use jwks::KeySet;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 30;

const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// The bearer token itself, kept for introspection; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// For a caller that proved itself otherwise (a WebSocket ticket).
    pub fn none() -> Self {
        Self(Arc::from(""))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken([redacted])")
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    /// The roles Keel acts on: the token's, cut down to the user's roles in Keel once it
    /// is registered (see [`crate::policy`]).
    pub roles: Vec<String>,
    /// The token's `exp` (Unix seconds): a WebSocket closes then.
    pub expires_at: i64,
    /// The token's `iat`, compared with a user's revocation cut-off.
    pub issued_at: Option<i64>,
    /// The token's `jti`, compared with the revoked tokens.
    pub jti: Option<Arc<str>>,
    /// Whether the user has registered in Keel (known once authorized).
    pub registered: bool,
    pub token: BearerToken,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// 403 unless Keel grants this caller `admin`; `what` names what needs it.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!("{what} needs the admin role")))
        }
    }
}

#[derive(Deserialize)]
struct RealmAccess {
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    realm_access: Option<RealmAccess>,
}

/// The `typ` of an access token (Keycloak's); ID and refresh tokens say otherwise.
const ACCESS_TOKEN_TYPE: &str = "Bearer";

/// Tokens already verified, by SHA-256 of the whole token: clients send the same token
/// for minutes, and an RSA verification costs far more than the rest of a command.
/// Only successful verifications are kept, each until its `exp` and at most
/// [`VERIFIED_TTL_SECS`]; past [`VERIFIED_CAPACITY`] entries the cache starts over.
struct Verified {
    entries: HashMap<[u8; 32], (Principal, i64)>,
}

/// Most verified tokens remembered.
pub const VERIFIED_CAPACITY: usize = 100_000;
/// Longest a verified token is trusted without checking its signature again.
pub const VERIFIED_TTL_SECS: i64 = 300;

/// Verifies bearer tokens against the cached keys of one issuer.
pub struct Verifier {
    keys: Arc<KeySet>,
    issuer: String,
    audiences: Vec<String>,
    verified: Mutex<Verified>,
}

impl Verifier {
    pub fn new(keys: Arc<KeySet>, issuer: String, audiences: Vec<String>) -> Self {
        Self {
            keys,
            issuer,
            audiences,
            verified: Mutex::new(Verified {
                entries: HashMap::new(),
            }),
        }
    }

    fn remembered(&self, digest: &[u8; 32], now: i64) -> Option<Principal> {
        let verified = self.verified.lock().ok()?;
        match verified.entries.get(digest) {
            Some((principal, until)) if now < *until => Some(principal.clone()),
            _ => None,
        }
    }

    fn remember(&self, digest: [u8; 32], principal: &Principal, until: i64) {
        if let Ok(mut verified) = self.verified.lock() {
            if verified.entries.len() >= VERIFIED_CAPACITY {
                verified.entries.clear();
            }
            verified.entries.insert(digest, (principal.clone(), until));
        }
    }

    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// Verifies a compact JWS. The error text is safe to return to the client.
    pub async fn verify(&self, token: &str) -> Result<Principal, &'static str> {
        let now = now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(principal) = self.remembered(&digest, now) {
            return Ok(principal);
        }
        let principal = self.verify_signed(token, now).await?;
        let until = principal
            .expires_at
            .saturating_add(LEEWAY_SECS as i64)
            .min(now + VERIFIED_TTL_SECS);
        self.remember(digest, &principal, until);
        Ok(principal)
    }

    async fn verify_signed(&self, token: &str, now: i64) -> Result<Principal, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
        if !ACCEPTED.contains(&header.alg) {
            return Err("token algorithm not accepted");
        }
        let kid = header.kid.ok_or("token has no key id")?;
        let key = self.keys.key(&kid).await.ok_or("unknown signing key")?;
        if key.alg.is_some_and(|alg| alg != header.alg)
            || key.decoding.family() != family(header.alg)
        {
            return Err("token algorithm does not match its key");
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)
            .map_err(|e| reason(e.kind()))?;
        let claims = data.claims;
        if claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS as i64) {
            return Err("token issued in the future");
        }
        let user_id = claims
            .sub
            .parse::<UserId>()
            .map_err(|_| "token subject is not a UUID")?;
        if claims
            .typ
            .as_deref()
            .is_some_and(|typ| !typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYPE))
        {
            return Err("not an access token (typ)");
        }
        let roles = claims.realm_access.map(|r| r.roles).unwrap_or_default();
        let jti = claims.jti.filter(|jti| !jti.is_empty()).map(Arc::from);
        if jti.is_none() && roles.iter().any(|r| r == "admin") {
            return Err("an admin token must carry a jti");
        }
        Ok(Principal {
            user_id,
            roles,
            expires_at: claims.exp as i64,
            issued_at: claims.iat,
            jti,
            registered: false,
            token: BearerToken(Arc::from(token)),
        })
    }
}

fn family(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        _ => AlgorithmFamily::Rsa,
    }
}

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not yet valid",
        K::InvalidIssuer => "token issuer not accepted",
        K::InvalidAudience => "token audience not accepted",
        K::InvalidSignature => "token signature invalid",
        K::MissingRequiredClaim(_) => "token lacks a required claim",
        _ => "token invalid",
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.remove::<VerifiedBearer>() {
            Some(VerifiedBearer(verified)) => admit(state, verified).await,
            None => authenticate(state, bearer_token(parts)).await,
        }
    }
}

/// What the verifier said of the request's bearer token, kept by the rate limiter (which
/// verifies it first, to know the principal) so the handler does not verify it again.
#[derive(Clone)]
pub struct VerifiedBearer(pub Result<Principal, &'static str>);

/// The caller of `token` (none sent: 401 without an error code), recorded on the
/// request's span, as Keel's policy allows it now.
pub async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Principal, ApiError> {
    let token = token.ok_or(ApiError::Unauthenticated)?;
    admit(state, state.verifier.verify(token).await).await
}

/// A verified token's principal as Keel's policy allows it now (a refused token: 401).
async fn admit(
    state: &AppState,
    verified: Result<Principal, &'static str>,
) -> Result<Principal, ApiError> {
    let principal = verified.map_err(|reason| ApiError::Unauthorized(reason.to_owned()))?;
    tracing::Span::current().record("user_id", tracing::field::display(principal.user_id));
    state.policy.authorize(principal).await
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    bearer_token_in(&parts.headers)
}

/// The token of an `Authorization: Bearer <token>` header among `headers`.
pub fn bearer_token_in(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Before a sensitive operation: the identity provider must say the caller's token is
/// still active (when `KEEL_INTROSPECTION_URL` is set).
pub async fn ensure_active(state: &AppState, principal: &Principal) -> Result<(), ApiError> {
    match &state.introspection {
        Some(introspection) => introspection.ensure_active(principal).await,
        None => Ok(()),
    }
}

/// Now, in Unix seconds.
pub(crate) fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// A URL the identity provider is reached at must be https, unless its host is loopback
/// (a development issuer): keys or tokens fetched or sent in clear could be forged or
/// stolen on the way.
pub fn ensure_secure_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("not a URL: {error}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be https (http only for a loopback host)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_provider_urls_must_be_https_unless_loopback() {
        for ok in [
            "https://sso.example/realms/keel/protocol/openid-connect/certs",
            "http://127.0.0.1:8081/certs",
            "http://127.8.0.1/certs",
            "http://[::1]:8081/certs",
            "http://localhost:8081/certs",
        ] {
            assert_eq!(ensure_secure_url(ok), Ok(()), "{ok}");
        }
        for refused in [
            "http://sso.example/certs",
            "http://10.0.0.1/certs",
            "http://localhost.evil.example/certs",
            "ftp://127.0.0.1/certs",
            "not a url",
        ] {
            assert!(ensure_secure_url(refused).is_err(), "{refused}");
        }
    }
}
