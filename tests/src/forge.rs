//! Forged tokens for the attack catalogue: any header, any claims (of any JSON type),
//! signed by a P-256 key the test controls, or not signed at all.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the test's own, with its JWK.
pub struct Forger {
    key: EncodingKey,
    pub kid: String,
    pub jwk: Value,
}

impl Forger {
    pub fn new(kid: &str) -> anyhow::Result<Self> {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret.to_pkcs8_pem(p256::pkcs8::LineEnding::LF)?;
        let key = EncodingKey::from_ec_pem(pem.as_bytes())?;
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let (x, y) = (
            point.x().ok_or_else(|| anyhow::anyhow!("no x"))?,
            point.y().ok_or_else(|| anyhow::anyhow!("no y"))?,
        );
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                         "x": b64(x), "y": b64(y)});
        Ok(Self {
            key,
            kid: kid.to_owned(),
            jwk,
        })
    }

    /// Signs `header.claims` with ES256 exactly as given.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, Algorithm::ES256)
            .expect("ES256 signing with the forger's key");
        format!("{message}.{signature}")
    }
}

/// `header.claims.` with the given header (e.g. `alg: none`) and no signature.
pub fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// HS256 with `secret` as the HMAC key.
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("HS256 signing");
    format!("{message}.{signature}")
}

/// A JWKS server of the test issuer's keys, a forger's key (so a test can sign any claims
/// Keel will verify) and a Keycloak-style encryption key.
pub async fn jwks_with_forger() -> (crate::JwksServer, Forger) {
    let forger = Forger::new("forger-es256").expect("a forger key");
    let jwks = crate::JwksServer::start().await.expect("a JWKS server");
    let mut document = crate::jwks_server::issuer().jwks();
    if let Some(keys) = document["keys"].as_array_mut() {
        let mut enc = keys[0].clone();
        enc["kid"] = serde_json::json!("enc-key");
        enc["use"] = serde_json::json!("enc");
        enc["alg"] = serde_json::json!("RSA-OAEP");
        keys.push(forger.jwk.clone());
        keys.push(enc);
    }
    jwks.set_document(document);
    (jwks, forger)
}
