//! Service-to-service callers of `/internal/*`: named keys, presented in `X-Api-Key` or
//! `X-Service-Token` and compared in constant time. A user's bearer token never counts.
//!
//! Keys come from `KEEL_SERVICE_KEYS` (comma-separated) and `KEEL_SERVICE_KEYS_FILE` (one
//! a line, `#` comments), each `name:secret` or a bare `secret` (named `key-<n>`, its
//! place in the list or its line). The file is re-read while Keel runs
//! ([`super::key_file`]), so keys rotate without a restart. Only names are ever logged.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use super::key_attempts::FailedAttempts;
use crate::config::ServiceKeys;
use crate::error::ApiError;
use crate::state::AppState;

pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub static X_SERVICE_TOKEN: HeaderName = HeaderName::from_static("x-service-token");

/// A shorter secret refuses the start, or a reload of the file.
pub const MIN_SECRET_CHARS: usize = 32;

/// The message never holds a secret: a key is named by its name.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "service key {name} in {origin} is shorter than {MIN_SECRET_CHARS} characters; \
         use a long random secret"
    )]
    TooShort { name: String, origin: String },
    #[error("cannot read the service keys file {path}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One accepted key: who uses it, and the SHA-256 of its secret.
#[derive(Clone)]
struct ServiceKey {
    name: Arc<str>,
    digest: [u8; 32],
}

/// A parsed list of keys. Comparing digests makes every comparison the same length
/// whatever was sent, so its time tells nothing about any key.
#[derive(Clone, Default)]
pub struct KeyList(Vec<ServiceKey>);

impl KeyList {
    /// `entries` in order (the `n` of `key-<n>`); `origin` names them in errors.
    fn parse<'a>(
        entries: impl IntoIterator<Item = (usize, &'a str)>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        entries
            .into_iter()
            .map(|(position, entry)| parse_entry(position, entry, origin))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// `KEEL_SERVICE_KEYS`.
    pub fn from_config(keys: &ServiceKeys) -> Result<Self, KeyError> {
        let entries = keys.keys().iter().map(String::as_str);
        Self::parse((1..).zip(entries), "KEEL_SERVICE_KEYS")
    }

    /// The text of a keys file: one key a line; blank lines and `#` comments skipped.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Self, KeyError> {
        let lines = (1..)
            .zip(text.lines().map(str::trim))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        Self::parse(lines, &path.display().to_string())
    }

    fn joined(&self, other: &Self) -> Self {
        Self(self.0.iter().chain(&other.0).cloned().collect())
    }

    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|key| &*key.name).collect()
    }

    /// The name of the key `presented` is. Every key is compared, byte by byte, without
    /// stopping early; an empty list accepts nothing.
    pub fn accepts(&self, presented: &[u8]) -> Option<Arc<str>> {
        let presented = digest(presented);
        self.0.iter().fold(None, |found, key| {
            let difference = key
                .digest
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                Some(key.name.clone())
            } else {
                found
            }
        })
    }
}

/// `name:secret`, or a bare `secret` named `key-<position>`. The secret may hold `:`;
/// a bare one may not.
fn parse_entry(position: usize, entry: &str, origin: &str) -> Result<ServiceKey, KeyError> {
    let (name, secret) = match entry.split_once(':') {
        Some((name, secret)) if !name.trim().is_empty() => (name.trim().to_owned(), secret),
        Some((_, secret)) => (format!("key-{position}"), secret),
        None => (format!("key-{position}"), entry),
    };
    let secret = secret.trim();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(KeyError::TooShort {
            name,
            origin: origin.to_owned(),
        });
    }
    Ok(ServiceKey {
        name: name.into(),
        digest: digest(secret.as_bytes()),
    })
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The keys accepted now (the variable's and the file's, swapped as one when the file
/// is re-read) and the limit on failed attempts.
pub struct Keyring {
    configured: KeyList,
    file: Option<PathBuf>,
    accepted: ArcSwap<KeyList>,
    attempts: FailedAttempts,
}

impl Keyring {
    /// The keys of `KEEL_SERVICE_KEYS` and `KEEL_SERVICE_KEYS_FILE`; any invalid one
    /// refuses the start.
    pub async fn load(keys: &ServiceKeys, file: Option<PathBuf>) -> Result<Self, KeyError> {
        let configured = KeyList::from_config(keys)?;
        let accepted = match &file {
            Some(path) => configured.joined(&read_file(path).await?),
            None => configured.clone(),
        };
        Ok(Self {
            configured,
            file,
            accepted: ArcSwap::from_pointee(accepted),
            attempts: FailedAttempts::default(),
        })
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the file again and, when every key in it is valid, swaps the accepted keys
    /// at once; otherwise the keys stay as they were. Returns the names now accepted.
    pub async fn reload(&self) -> Result<Vec<String>, KeyError> {
        let Some(path) = &self.file else {
            return Ok(self.names());
        };
        let from_file = read_file(path).await?;
        self.accepted
            .store(Arc::new(self.configured.joined(&from_file)));
        Ok(self.names())
    }

    fn names(&self) -> Vec<String> {
        self.accepted
            .load()
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    pub fn attempts(&self) -> &FailedAttempts {
        &self.attempts
    }

    /// The caller presenting `presented` from `ip`: 429 while `ip` has failed too often
    /// (whatever it presents now), else 401 unless the key is accepted.
    pub fn admit(&self, ip: IpAddr, presented: Option<&[u8]>) -> Result<ServiceCaller, ApiError> {
        self.attempts.ensure_allowed(ip)?;
        match presented.and_then(|key| self.accepted.load().accepts(key)) {
            Some(name) => {
                tracing::Span::current().record("service", &*name);
                Ok(ServiceCaller { name })
            }
            None => {
                tracing::warn!(ip = %ip, "internal request without an accepted service key");
                self.attempts.record_failure(ip)?;
                Err(ApiError::ServiceKeyRejected)
            }
        }
    }
}

async fn read_file(path: &Path) -> Result<KeyList, KeyError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| KeyError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
    KeyList::from_file_text(&text, path)
}

/// The key in `X-Api-Key`, else in `X-Service-Token`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(&X_API_KEY)
        .or_else(|| headers.get(&X_SERVICE_TOKEN))
        .map(|value| value.as_bytes())
}

/// Proof that the request carried an accepted service key; `name` says whose.
#[derive(Debug, Clone)]
pub struct ServiceCaller {
    pub name: Arc<str>,
}

impl FromRequestParts<AppState> for ServiceCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = crate::rate_limit::client_key(&parts.extensions);
        state.service_keys.admit(client, presented(&parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-secret-0123456789abcdef0123456789";
    const NEW: &str = "new-secret-0123456789abcdef0123456789";

    fn from_config(text: &str) -> Result<KeyList, KeyError> {
        KeyList::from_config(&text.parse().unwrap())
    }

    #[test]
    fn each_configured_key_is_accepted_by_its_name_and_nothing_else() {
        let keys = from_config(&format!("old:{OLD}, new:{NEW}")).unwrap();
        assert_eq!(keys.accepts(OLD.as_bytes()).as_deref(), Some("old"));
        assert_eq!(keys.accepts(NEW.as_bytes()).as_deref(), Some("new"));
        assert_eq!(keys.accepts(&NEW.as_bytes()[1..]), None);
        assert_eq!(keys.accepts(format!("{NEW} ").as_bytes()), None);
        assert_eq!(keys.accepts(format!("new:{NEW}").as_bytes()), None);
        assert_eq!(keys.accepts(b""), None);
    }

    #[test]
    fn a_bare_secret_is_named_by_its_place() {
        let keys = from_config(&format!("old:{OLD},{NEW}")).unwrap();
        assert_eq!(keys.names(), ["old", "key-2"]);
        assert_eq!(keys.accepts(NEW.as_bytes()).as_deref(), Some("key-2"));
        let unnamed = from_config(&format!(":{NEW}")).unwrap();
        assert_eq!(unnamed.names(), ["key-1"]);
    }

    #[test]
    fn a_secret_may_hold_colons_after_the_name() {
        let secret = "a:b:c:0123456789abcdef0123456789abcdef";
        let keys = from_config(&format!("svc:{secret}")).unwrap();
        assert_eq!(keys.accepts(secret.as_bytes()).as_deref(), Some("svc"));
    }

    #[test]
    fn a_short_secret_is_refused_without_showing_it() {
        let short = "s3cret-31-chars-long-0123456789";
        assert_eq!(short.len(), MIN_SECRET_CHARS - 1);
        let error = from_config(&format!("old:{OLD},billing:{short}"))
            .err()
            .unwrap();
        let message = error.to_string();
        assert!(message.contains("billing"), "{message}");
        assert!(message.contains("KEEL_SERVICE_KEYS"), "{message}");
        assert!(!message.contains(short), "{message}");
        assert!(from_config(short).is_err());
        assert!(from_config("name:").is_err());
    }

    #[test]
    fn without_configured_keys_nothing_is_accepted() {
        let keys = from_config("").unwrap();
        assert!(keys.names().is_empty());
        assert_eq!(keys.accepts(b""), None);
        assert_eq!(keys.accepts(OLD.as_bytes()), None);
    }

    #[test]
    fn a_keys_file_skips_comments_and_blank_lines_and_names_bare_secrets_by_line() {
        let text = format!("# rotated 2026-12\n\nbilling:{OLD}\n  {NEW}  \n");
        let keys = KeyList::from_file_text(&text, Path::new("keys")).unwrap();
        assert_eq!(keys.names(), ["billing", "key-4"]);
        let error = KeyList::from_file_text("ok:short\n", Path::new("/etc/keel/keys"))
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("ok in /etc/keel/keys"),
            "{error}"
        );
    }
}
