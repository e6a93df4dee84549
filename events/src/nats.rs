//! NATS, the same in every binary: connecting as a principal, and the names both sides of
//! the bus use for dead letters.
//!
//! A process authenticates with the `user:password@` of its `NATS_URL` (async-nats does
//! not read credentials from the URL itself) or with a creds file (`NATS_CREDS`, a user
//! JWT and nkey seed). With several comma-separated servers, the first URL that carries
//! credentials gives them. Nothing here logs the URL.

use std::path::Path;
use std::str::FromStr;

use async_nats::{ConnectOptions, ServerAddr};

/// The dead-letter stream of the event stream `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}_DLQ")
}

/// The subjects of the dead letters of events on `subject_prefix`: `dlq.<prefix>`, then
/// the consumer (outside `<prefix>.>`, so the dead-letter streams of different prefixes
/// never overlap).
pub fn dead_letter_subjects(subject_prefix: &str) -> String {
    format!("dlq.{subject_prefix}")
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read the NATS creds file")]
    Creds(#[source] std::io::Error),
    #[error("invalid NATS_URL")]
    Connect(#[source] async_nats::ConnectError),
}

/// The user and password in `url` (one or several comma-separated server URLs), if any.
pub fn credentials(url: &str) -> Option<(String, String)> {
    url.split(',').find_map(|server| {
        let addr = ServerAddr::from_str(server.trim()).ok()?;
        Some((addr.username()?.to_owned(), addr.password()?.to_owned()))
    })
}

/// Connects to `url` with `options` (`crate::tls::PrivateCa::nats`) as the URL's user, or
/// with the creds file `creds`; while the servers are away it keeps trying in the
/// background (the client is returned at once).
pub async fn connect(
    options: ConnectOptions,
    url: &str,
    creds: Option<&Path>,
) -> Result<async_nats::Client, ConnectError> {
    let mut options = options.retry_on_initial_connect();
    if let Some((user, password)) = credentials(url) {
        options = options.user_and_password(user, password);
    }
    if let Some(path) = creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(ConnectError::Creds)?;
    }
    options
        .connect(servers(url))
        .await
        .map_err(ConnectError::Connect)
}

/// The servers of `NATS_URL`: one URL, or several comma-separated (a cluster's nodes;
/// the client connects to one and fails over to the others).
pub fn servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_first_url_that_has_them() {
        assert_eq!(credentials("nats://127.0.0.1:4222"), None);
        assert_eq!(
            credentials("nats://127.0.0.1:4222, nats://keel-relay:s3cret@127.0.0.1:4223"),
            Some(("keel-relay".to_owned(), "s3cret".to_owned()))
        );
    }

    #[test]
    fn several_servers_are_comma_separated() {
        assert_eq!(
            servers("nats://a:4222, nats://b:4222,"),
            ["nats://a:4222", "nats://b:4222"]
        );
    }

    #[tokio::test]
    async fn a_missing_creds_file_is_an_error_before_any_connection() {
        let missing = Path::new("/nonexistent/keel.creds");
        assert!(matches!(
            connect(ConnectOptions::new(), "nats://127.0.0.1:1", Some(missing)).await,
            Err(ConnectError::Creds(_))
        ));
    }
}
