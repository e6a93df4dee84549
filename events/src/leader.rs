//! One active instance among several (the outbox publisher, the relay): a Postgres
//! session advisory lock, held on a dedicated connection for as long as the instance
//! leads. When the leader dies its connection closes and the lock is free; a leader that
//! freezes (SIGSTOP, a partition) stays silent and Postgres ends its session after the
//! idle timeout, so a waiting instance takes over within seconds either way.

use std::time::Duration;

use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

/// Waits until `session` holds the lock `key` (`true`), trying every `poll`, or until
/// `stop` (`false`). The session is first told to end after `idle` without a query: the
/// leader must query it more often than that to keep the lock.
pub async fn acquire(
    session: &mut PgConnection,
    key: i64,
    idle: Duration,
    poll: Duration,
    stop: &CancellationToken,
) -> Result<bool, sqlx::Error> {
    let timeout = format!("SET idle_session_timeout = '{}ms'", idle.as_millis());
    if let Err(error) = sqlx::query(&timeout).execute(&mut *session).await {
        tracing::warn!(error = %error, "idle_session_timeout unsupported (Postgres < 14): a frozen leader keeps the lock");
    }
    loop {
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *session)
            .await?;
        if acquired {
            return Ok(true);
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(false),
            () = tokio::time::sleep(poll) => {}
        }
    }
}
