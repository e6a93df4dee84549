//! Keeps the service keys current: re-reads `KEEL_SERVICE_KEYS_FILE` when its size or
//! modification time changes (looked at every second) and on SIGHUP.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::service_key::Keyring;

/// How often the file is looked at (and idle entries of the attempt limiter dropped).
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Listens for SIGHUP at once (so a SIGHUP right after the start reloads rather than
/// ends the process), then watches until `stop`.
pub fn watch(keyring: Arc<Keyring>, stop: CancellationToken) -> impl Future<Output = ()> {
    let hangup = signal(SignalKind::hangup())
        .inspect_err(|error| {
            tracing::warn!(error = %error, "cannot listen for SIGHUP; the keys file is only polled");
        })
        .ok();
    run(keyring, hangup, stop)
}

async fn run(keyring: Arc<Keyring>, mut hangup: Option<Signal>, stop: CancellationToken) {
    let mut seen = stamp(&keyring).await;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            () = stop.cancelled() => return,
            _ = poll.tick() => {
                keyring.attempts().forget_idle();
                let now = stamp(&keyring).await;
                if now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
            () = hung_up(&mut hangup) => {
                seen = stamp(&keyring).await;
                "SIGHUP"
            }
        };
        match keyring.reload().await {
            Ok(names) => tracing::info!(trigger, names = %names.join(","), "service keys reloaded"),
            Err(error) => tracing::error!(
                trigger,
                error = %error,
                cause = ?std::error::Error::source(&error),
                "service keys file not loaded; the previous keys stay"
            ),
        }
    }
}

/// The file's size and modification time; `None` when there is no file to look at.
async fn stamp(keyring: &Keyring) -> Option<(u64, SystemTime)> {
    let metadata = tokio::fs::metadata(keyring.file()?).await.ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

async fn hung_up(hangup: &mut Option<Signal>) {
    if let Some(signal) = hangup
        && signal.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}
