//! Redis, seen from the projectors: after a batch commits, the dashboards it changed are
//! deleted (the API refills them cache-aside), and the policy changes it applied are
//! announced on `policy.invalidate.*` (every command-api instance evicts what it cached).
//! Redis being away never stops a projection: the failure is logged; the cached
//! dashboards expire by their TTL (`events::read_model::DASHBOARD_TTL_SECS`) and the API
//! instances read policy changes from the log within a second anyway.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use domain::ids::UserId;
use events::read_model::{dashboard_key, dashboard_key_prefix};

/// The longest a cache call may take before it is given up.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// The UI cache in Redis, as the projectors keep it fresh.
pub struct UiCache {
    client: redis::Client,
    stream: String,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl UiCache {
    pub fn new(client: redis::Client, stream: String) -> Self {
        Self {
            client,
            stream,
            connection: Mutex::new(None),
        }
    }

    /// Deletes the cached dashboards of `users`.
    pub async fn invalidate(&self, users: &mut Vec<UserId>) {
        users.sort_unstable();
        users.dedup();
        if users.is_empty() {
            return;
        }
        let keys: Vec<String> = users
            .iter()
            .map(|u| dashboard_key(&self.stream, *u))
            .collect();
        self.run(redis::cmd("DEL").arg(keys), users.len()).await;
    }

    /// Deletes every cached dashboard of this stream (after a rebuild swapped the model).
    pub async fn invalidate_all(&self) {
        let Some(mut connection) = self.connect().await else {
            return;
        };
        let pattern = format!("{}*", dashboard_key_prefix(&self.stream));
        let sweep = delete_matching(&mut connection, &pattern);
        match tokio::time::timeout(REDIS_TIMEOUT * 20, sweep).await {
            Ok(Ok(deleted)) => tracing::info!(deleted, "cached dashboards dropped"),
            Ok(Err(error)) => self.failed(&error.to_string()).await,
            Err(_) => self.failed("timed out").await,
        }
    }

    /// Publishes an (empty) message on each of `channels` (`policy.invalidate.*`).
    pub async fn announce(&self, channels: &[String]) {
        if channels.is_empty() {
            return;
        }
        let Some(mut connection) = self.connect().await else {
            return;
        };
        let mut pipeline = redis::pipe();
        for channel in channels {
            pipeline.cmd("PUBLISH").arg(channel).arg("").ignore();
        }
        match tokio::time::timeout(REDIS_TIMEOUT, pipeline.query_async::<()>(&mut connection)).await
        {
            Ok(Ok(())) => tracing::debug!(channels = channels.len(), "policy changes announced"),
            Ok(Err(error)) => self.failed(&error.to_string()).await,
            Err(_) => self.failed("timed out").await,
        }
    }

    async fn run(&self, command: &redis::Cmd, users: usize) {
        let Some(mut connection) = self.connect().await else {
            return;
        };
        match tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<()>(&mut connection)).await
        {
            Ok(Ok(())) => tracing::debug!(users, "cached dashboards invalidated"),
            Ok(Err(error)) => self.failed(&error.to_string()).await,
            Err(_) => self.failed("timed out").await,
        }
    }

    async fn connect(&self) -> Option<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Some(connection.clone());
        }
        match tokio::time::timeout(
            REDIS_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(connection)) => {
                *slot = Some(connection.clone());
                Some(connection)
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "redis unavailable; cached dashboards expire by ttl");
                None
            }
            Err(_) => {
                tracing::warn!("redis connect timed out; cached dashboards expire by ttl");
                None
            }
        }
    }

    async fn failed(&self, error: &str) {
        tracing::warn!(
            error,
            "redis invalidation failed; cached dashboards expire by ttl, api instances tail the log"
        );
        *self.connection.lock().await = None;
    }
}

/// Deletes every key matching `pattern` (a `SCAN` sweep, so Redis is never blocked by one
/// long command); how many were deleted.
pub async fn delete_matching(
    connection: &mut impl redis::aio::ConnectionLike,
    pattern: &str,
) -> Result<usize, redis::RedisError> {
    let mut cursor = 0_u64;
    let mut deleted = 0_usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(connection)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            redis::cmd("UNLINK")
                .arg(keys)
                .query_async::<()>(connection)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
