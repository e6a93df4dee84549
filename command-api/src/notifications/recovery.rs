//! Recovery reads of a user's notification history (the `notify` crate's read script, the
//! relay's writes): where a socket resumes, and whether the history still covers it, on
//! one Redis connection shared by every socket and retried briefly while Redis returns.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use domain::ids::UserId;
use notify::{CatchUp, Delivered, ReadError, Reader};

/// Tries of one read before the socket is closed (1011) or refused (503).
const ATTEMPTS: u32 = 6;

/// Reads histories; one multiplexed Redis connection shared by every socket.
pub struct History {
    reader: Reader,
    connection: ConnectionManager,
}

impl History {
    pub fn new(client: &redis::Client, stream: &str) -> Result<Self, redis::RedisError> {
        // No retries inside the connection: `retrying` retries, briefly, so that an absent
        // Redis is reported within a second or two.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        Ok(Self {
            reader: Reader::new(stream),
            connection: ConnectionManager::new_lazy_with_config(client.clone(), config)?,
        })
    }

    /// One read, tried [`ATTEMPTS`] times: right after Redis comes back, the first call
    /// on the old connection fails while the connection manager reconnects.
    async fn retrying<T, F, Fut>(&self, read: F) -> Result<T, ReadError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, ReadError>>,
    {
        let mut pause = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match read(self.connection.clone()).await {
                Err(ReadError::Redis(_)) if attempt < ATTEMPTS => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// The place of a socket that starts live: the newest notification so far.
    pub async fn tail(&self, user: UserId) -> Result<Delivered, ReadError> {
        let reader = &self.reader;
        self.retrying(|mut connection| async move { reader.tail(&mut connection, user).await })
            .await
    }

    /// Everything after `delivered` still in the history, and whether that is all of it.
    pub async fn after(&self, user: UserId, delivered: &Delivered) -> Result<CatchUp, ReadError> {
        let reader = &self.reader;
        self.retrying(|mut connection| async move {
            reader.after(&mut connection, user, delivered).await
        })
        .await
    }
}
