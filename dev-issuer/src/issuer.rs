//! The issuer itself: its signing keys, minting, verifying its own tokens, and revoked `jti`s.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::EncodePrivateKey;
use rand::rngs::OsRng;
use rsa::{
    RsaPrivateKey,
    pkcs1::EncodeRsaPrivateKey,
    pkcs8::{EncodePublicKey, LineEnding},
    traits::PublicKeyParts,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::IssuerError;

/// The `aud` of a token whose request names no audience (what Keel expects by default).
pub const DEFAULT_AUDIENCE: &str = "keel";

/// The `typ` of a token whose request names none: an access token, as Keycloak's say.
pub const DEFAULT_TOKEN_TYPE: &str = "Bearer";

/// Signature algorithm of a minted token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Alg {
    #[default]
    #[serde(rename = "RS256", alias = "rs256")]
    Rs256,
    #[serde(rename = "ES256", alias = "es256")]
    Es256,
}

/// What `POST /token` accepts and [`Issuer::mint`] signs. Only `sub` is required;
/// in code, write `TokenRequest { sub, roles, ..Default::default() }`.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenRequest {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Lifetime; negative yields an already expired token. Default 3600.
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: i64,
    #[serde(default)]
    pub alg: Alg,
    /// The `aud` claim; `None` means [`DEFAULT_AUDIENCE`].
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    /// The `name` and `preferred_username` claims.
    #[serde(default)]
    pub name: Option<String>,
    /// The `typ` claim; `None` means [`DEFAULT_TOKEN_TYPE`] (`"ID"` makes an ID token).
    #[serde(default)]
    pub typ: Option<String>,
}

fn default_ttl_seconds() -> i64 {
    3600
}

impl Default for TokenRequest {
    /// No subject, no roles, one hour, RS256, and every optional claim at its default.
    fn default() -> Self {
        TokenRequest {
            sub: String::new(),
            roles: Vec::new(),
            ttl_seconds: default_ttl_seconds(),
            alg: Alg::Rs256,
            audience: None,
            email: None,
            name: None,
            typ: None,
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    typ: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
    realm_access: RealmAccess<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<&'a str>,
}

#[derive(Serialize)]
struct RealmAccess<'a> {
    roles: &'a [String],
}

/// The claims introspection and revocation read back from a token this issuer signed.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IssuedClaims {
    pub iss: String,
    pub sub: String,
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub jti: Option<String>,
    /// A string or an array of strings, as in the token.
    #[serde(default)]
    pub aud: Option<Value>,
    #[serde(default)]
    pub typ: Option<String>,
}

/// Whether [`Issuer::verify`] refuses an expired token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Enforce,
    Ignore,
}

/// One RSA-2048 and one P-256 signing key, freshly generated, plus the issuer URL, the
/// `jti`s revoked so far and a count of introspection requests.
pub struct Issuer {
    issuer: String,
    rs256_kid: String,
    es256_kid: String,
    rs256_key: EncodingKey,
    es256_key: EncodingKey,
    rs256_public: DecodingKey,
    es256_public: DecodingKey,
    rsa_public_pem: String,
    jwks: Value,
    revoked: Mutex<HashSet<String>>,
    introspections: AtomicUsize,
}

impl Issuer {
    /// Generates fresh keys; `issuer` is the `iss` of every token (e.g. `http://127.0.0.1:8081/realms/keel`).
    pub fn generate(issuer: impl Into<String>) -> Result<Issuer, IssuerError> {
        let rsa = RsaPrivateKey::new(&mut OsRng, 2048).map_err(IssuerError::GenerateRsaKey)?;
        let rsa_der = rsa.to_pkcs1_der().map_err(IssuerError::EncodeRsaKey)?;
        let rsa_public_pem = rsa
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(IssuerError::EncodeRsaPublicKey)?;
        let ec = p256::SecretKey::random(&mut OsRng);
        let ec_der = ec.to_pkcs8_der().map_err(IssuerError::EncodeEcKey)?;
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&ec.public_key(), false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(IssuerError::EcPointAtInfinity);
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let es256_public =
            DecodingKey::from_ec_components(&x, &y).map_err(IssuerError::DecodeEcKey)?;
        let (n, e) = (rsa.n().to_bytes_be(), rsa.e().to_bytes_be());
        let rs256_public = DecodingKey::from_rsa_raw_components(&n, &e);
        let rs256_kid = format!("dev-rs256-{:08x}", rand::random::<u32>());
        let es256_kid = format!("dev-es256-{:08x}", rand::random::<u32>());
        let jwks = json!({ "keys": [
            { "kty": "RSA", "kid": rs256_kid, "use": "sig", "alg": "RS256",
              "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e) },
            { "kty": "EC", "kid": es256_kid, "use": "sig", "alg": "ES256", "crv": "P-256",
              "x": x, "y": y },
        ]});
        Ok(Issuer {
            issuer: issuer.into(),
            rs256_key: EncodingKey::from_rsa_der(rsa_der.as_bytes()),
            es256_key: EncodingKey::from_ec_der(ec_der.as_bytes()),
            rs256_public,
            es256_public,
            rs256_kid,
            es256_kid,
            rsa_public_pem,
            jwks,
            revoked: Mutex::new(HashSet::new()),
            introspections: AtomicUsize::new(0),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Absolute URL of the JWKS, at Keycloak's path under the issuer.
    pub fn jwks_uri(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer)
    }

    /// Absolute URL of the RFC 7662 introspection endpoint, at Keycloak's path.
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/token/introspect", self.issuer)
    }

    /// Absolute URL of the RFC 7009 revocation endpoint, at Keycloak's path.
    pub fn revocation_endpoint(&self) -> String {
        format!("{}/protocol/openid-connect/revoke", self.issuer)
    }

    /// Public keys only: `{"keys": [RS256 key, ES256 key]}`.
    pub fn jwks(&self) -> Value {
        self.jwks.clone()
    }

    pub fn rs256_kid(&self) -> &str {
        &self.rs256_kid
    }

    pub fn es256_kid(&self) -> &str {
        &self.es256_kid
    }

    /// SPKI PEM (`-----BEGIN PUBLIC KEY-----`) of the RSA public key.
    pub fn rsa_public_pem(&self) -> String {
        self.rsa_public_pem.clone()
    }

    /// Signs a JWT for `request`, with a fresh v4 `jti`, `aud` (default [`DEFAULT_AUDIENCE`])
    /// and `typ` (default [`DEFAULT_TOKEN_TYPE`]); a negative `ttl_seconds` yields an
    /// already expired token.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, IssuerError> {
        let iat = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.issuer,
            sub: &request.sub,
            aud: request.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE),
            typ: request.typ.as_deref().unwrap_or(DEFAULT_TOKEN_TYPE),
            exp: iat.saturating_add(request.ttl_seconds),
            iat,
            nbf: iat,
            jti: uuid::Uuid::new_v4().to_string(),
            realm_access: RealmAccess {
                roles: &request.roles,
            },
            email: request.email.as_deref(),
            name: request.name.as_deref(),
            preferred_username: request.name.as_deref(),
        };
        let (algorithm, kid, key) = match request.alg {
            Alg::Rs256 => (Algorithm::RS256, &self.rs256_kid, &self.rs256_key),
            Alg::Es256 => (Algorithm::ES256, &self.es256_kid, &self.es256_key),
        };
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, key).map_err(IssuerError::Sign)
    }

    /// The claims of `token` if it is active: signed by one of this issuer's keys (the
    /// one its `kid` names, with that key's algorithm), with this `iss`, not expired (no
    /// leeway) and its `jti` not revoked. `None` for anything else. What introspection
    /// answers; calling it directly does not count as an introspection.
    pub fn introspect(&self, token: &str) -> Option<IssuedClaims> {
        let claims = self.verify(token, Expiry::Enforce)?;
        match &claims.jti {
            Some(jti) if self.is_revoked(jti) => None,
            _ => Some(claims),
        }
    }

    /// Revokes `token` if this issuer signed it (expired or not): remembers its `jti` and
    /// returns it. `None` (nothing remembered) for a token that does not verify or has
    /// no `jti`.
    pub fn revoke(&self, token: &str) -> Option<String> {
        let jti = self.verify(token, Expiry::Ignore)?.jti?;
        self.revoke_jti(&jti);
        Some(jti)
    }

    /// Remembers `jti` as revoked: introspection calls its token inactive from now on.
    pub fn revoke_jti(&self, jti: &str) {
        self.revoked_jtis().insert(jti.to_owned());
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked_jtis().contains(jti)
    }

    /// How many requests the introspection endpoint has received (authenticated or not)
    /// on every router serving this issuer.
    pub fn introspections(&self) -> usize {
        self.introspections.load(Ordering::SeqCst)
    }

    pub(crate) fn count_introspection(&self) {
        self.introspections.fetch_add(1, Ordering::SeqCst);
    }

    fn revoked_jtis(&self) -> MutexGuard<'_, HashSet<String>> {
        // A set of strings cannot be left half-updated by a panic: the data is sound.
        self.revoked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn verify(&self, token: &str, expiry: Expiry) -> Option<IssuedClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let (algorithm, key) = match header.kid.as_deref() {
            Some(kid) if kid == self.rs256_kid => (Algorithm::RS256, &self.rs256_public),
            Some(kid) if kid == self.es256_kid => (Algorithm::ES256, &self.es256_public),
            _ => return None,
        };
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.validate_aud = false;
        validation.validate_exp = expiry == Expiry::Enforce;
        validation.leeway = 0;
        jsonwebtoken::decode::<IssuedClaims>(token, key, &validation)
            .ok()
            .map(|data| data.claims)
    }
}
