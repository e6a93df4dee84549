//! The UI cache in Redis: one lazily connected connection shared by all requests, every
//! call bounded by [`CALL_TIMEOUT`], so a slow or absent Redis costs a request at most
//! that long and the caller answers without it; once Redis is back, calls work again.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Longest one cache call (connecting included) may take.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// The connection's own limit on connecting and on each answer. Shorter than
/// [`CALL_TIMEOUT`], so that the connection, not the caller, notices a stalled server.
const CONNECTION_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum UiCacheError {
    #[error("redis did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("the redis call failed")]
    Redis(#[source] redis::RedisError),
}

/// A handle on the cache; cheap to clone (clones share the connection).
#[derive(Clone)]
pub struct UiCache {
    client: redis::Client,
    connection: Arc<RwLock<ConnectionManager>>,
}

/// A connection that connects on first use (one attempt, no retry loop: the request that
/// finds Redis down goes on without it).
fn lazy_connection(client: &redis::Client) -> Result<ConnectionManager, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(CONNECTION_TIMEOUT));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

impl UiCache {
    /// Does not connect: the API starts, and answers, while Redis is down.
    pub fn new(client: redis::Client) -> Result<Self, redis::RedisError> {
        let connection = lazy_connection(&client)?;
        Ok(Self {
            client,
            connection: Arc::new(RwLock::new(connection)),
        })
    }

    fn current(&self) -> ConnectionManager {
        match self.connection.read() {
            Ok(connection) => connection.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a fresh lazy connection in place of one that failed, whatever the failure
    /// was: the next call connects anew instead of trusting a connection in an unknown
    /// state. The old one closes when its last in-flight call ends.
    fn replace_connection(&self) {
        match lazy_connection(&self.client) {
            Ok(fresh) => match self.connection.write() {
                Ok(mut connection) => *connection = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(error) => tracing::warn!(error = %error, "cannot prepare a redis connection"),
        }
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> Result<T, UiCacheError> {
        let mut connection = self.current();
        let error =
            match tokio::time::timeout(CALL_TIMEOUT, command.query_async(&mut connection)).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => UiCacheError::Redis(error),
                Err(_) => UiCacheError::Timeout,
            };
        self.replace_connection();
        Err(error)
    }

    /// Whether Redis answers, on the shared connection.
    pub async fn ping(&self) -> Result<(), UiCacheError> {
        self.call::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// The value at `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<String>, UiCacheError> {
        self.call(redis::cmd("GET").arg(key)).await
    }

    /// Stores `value` at `key` for `ttl_secs` seconds.
    pub async fn set(&self, key: &str, value: &str, ttl_secs: u64) -> Result<(), UiCacheError> {
        self.call(
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("EX")
                .arg(ttl_secs),
        )
        .await
    }
}
