//! Redis and NATS clients made the same way in every binary, over TLS when asked for.
//!
//! A `rediss://` Redis URL and a `tls://` NATS URL connect over TLS (rustls); the server's
//! certificate must match the URL's host and chain to a trusted CA: the system's, or the
//! private one in `KEEL_TLS_CA_FILE` (PEM), which replaces them for Redis and is added to
//! them for NATS. Postgres needs nothing here: its URL carries its own settings
//! (`sslmode=verify-full&sslrootcert=<file>`), see [`crate::database`].

use std::path::{Path, PathBuf};

/// The CA file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the CA file {path}")]
pub struct CaFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// The private CA that the Redis and NATS servers' certificates chain to, if any.
#[derive(Debug, Clone, Default)]
pub struct PrivateCa {
    file: Option<(PathBuf, Vec<u8>)>,
}

impl PrivateCa {
    /// Reads the PEM file at `path` (none: the system's CAs only). Read at start, so a
    /// missing file stops the start instead of every later connection.
    pub fn load(path: Option<&Path>) -> Result<Self, CaFileError> {
        let file = path
            .map(|path| {
                std::fs::read(path)
                    .map(|pem| (path.to_owned(), pem))
                    .map_err(|source| CaFileError {
                        path: path.to_owned(),
                        source,
                    })
            })
            .transpose()?;
        Ok(Self { file })
    }

    /// A Redis client for `url`; a `rediss://` one trusts only the private CA when there
    /// is one.
    pub fn redis(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match &self.file {
            Some((_, pem)) if url.starts_with("rediss://") => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            _ => redis::Client::open(url),
        }
    }

    /// NATS connect options that also trust the private CA when there is one.
    pub fn nats(&self) -> async_nats::ConnectOptions {
        let options = async_nats::ConnectOptions::new();
        match &self.file {
            Some((path, _)) => options.add_root_certificates(path.clone()),
            None => options,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_reported_with_its_path() {
        let error = PrivateCa::load(Some(Path::new("/nonexistent/keel-ca.pem"))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "cannot read the CA file /nonexistent/keel-ca.pem"
        );
    }

    #[test]
    fn without_a_ca_file_plain_urls_make_plain_clients() {
        let ca = PrivateCa::load(None).unwrap();
        assert!(ca.redis("redis://127.0.0.1:6379").is_ok());
        assert!(ca.redis("rediss://127.0.0.1:6380").is_ok());
    }
}
