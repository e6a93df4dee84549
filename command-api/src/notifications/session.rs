//! One socket: recovery from its history, then live notifications, until it closes.
//!
//! The socket registers with the hub (its user's channel subscribed) *before* it reads
//! its history, so a notification published meanwhile is both in the history and in its
//! queue; the cursor (the last offset sent) drops the second copy, and any duplicate, so
//! each notification reaches the socket once and in offset order.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};

use super::hub::{Hub, Live, Registration};
use crate::auth::Principal;
use notify::{CatchUp, Delivered, ReadError};

/// How often the server pings; a socket that answered nothing for two of them is dropped.
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// Longest one frame may take to go out before the socket counts as too slow.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longer-lived tokens are treated as expiring after a year (no `Instant` overflow).
const LONGEST_TOKEN_SECS: u64 = 365 * 24 * 3600;

/// Close codes.
pub const GOING_AWAY: u16 = 1001;
pub const SERVER_ERROR: u16 = 1011;
pub const TRY_AGAIN_LATER: u16 = 1013;
pub const TOKEN_EXPIRED: u16 = 4001;
pub const ACCESS_REVOKED: u16 = 4003;

pub struct Session {
    pub hub: Arc<Hub>,
    /// Who opened it: the user, and the token whose `exp` ends it and whose revocation
    /// (or its user's) closes it.
    pub principal: Principal,
    /// Where the socket starts: the offset the client resumes after, or the newest
    /// notification when it connected (read before the upgrade was accepted, so nothing
    /// published after the client saw its socket open is missed).
    pub cursor: Delivered,
}

/// Why a session ends.
enum End {
    /// The client went away, or stopped answering: nothing to say to it.
    Gone,
    ShuttingDown,
    TooSlow,
    TokenExpired,
    /// The token was revoked, or its user deactivated or cut off.
    Revoked,
    HistoryUnavailable,
}

impl End {
    /// The close frame the client gets, if any.
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            End::Gone => return None,
            End::ShuttingDown => (GOING_AWAY, "server shutting down"),
            End::TooSlow => (TRY_AGAIN_LATER, "too slow"),
            End::TokenExpired => (TOKEN_EXPIRED, "token expired"),
            End::Revoked => (ACCESS_REVOKED, "access revoked"),
            End::HistoryUnavailable => (
                SERVER_ERROR,
                "notifications unavailable; reconnect with Last-Event-ID",
            ),
        };
        Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })
    }
}

type Sink = SplitSink<WebSocket, Message>;

impl Session {
    pub async fn run(self, socket: WebSocket) {
        let mut registration = self.hub.register(&self.principal).await;
        let (mut sink, mut incoming) = socket.split();
        // A change applied between the handshake's authorization and the registration
        // reached no socket yet: look once more.
        let end = if self
            .hub
            .policy
            .revokes(&self.principal)
            .await
            .unwrap_or(false)
        {
            End::Revoked
        } else {
            self.serve(&mut registration, &mut sink, &mut incoming)
                .await
        };
        if matches!(end, End::TooSlow) {
            self.hub.record_eviction();
        }
        if let Some(frame) = end.close_frame() {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
        }
    }

    async fn serve(
        &self,
        registration: &mut Registration,
        sink: &mut Sink,
        incoming: &mut futures::stream::SplitStream<WebSocket>,
    ) -> End {
        // Registered first, then the history read: whatever is published meanwhile is
        // in the history, in the queue, or both (and then dropped by the cursor). A
        // resubscription from now on (even during this read) triggers another read.
        let remaining = self.principal.expires_at - crate::auth::now();
        let expiry = tokio::time::Instant::now()
            + Duration::from_secs(
                u64::try_from(remaining)
                    .unwrap_or(0)
                    .min(LONGEST_TOKEN_SECS),
            );
        let mut cursor = self.cursor.clone();
        if let Err(end) = self.catch_up(registration, sink, &mut cursor).await {
            return end;
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        // A loop held up by a slow write must not count as two silent pings.
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut answered = true;
        loop {
            tokio::select! {
                biased;
                () = self.hub.closing.cancelled() => return End::ShuttingDown,
                () = registration.evicted.cancelled() => return End::TooSlow,
                () = registration.revoked.cancelled() => return End::Revoked,
                () = tokio::time::sleep_until(expiry) => return End::TokenExpired,
                changed = registration.generation.changed() => {
                    if changed.is_err() {
                        return End::ShuttingDown;
                    }
                    if let Err(end) = self.catch_up(registration, sink, &mut cursor).await {
                        return end;
                    }
                }
                frame = incoming.next() => match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Gone,
                    // Clients have nothing to say; anything they send proves them alive.
                    Some(Ok(_)) => answered = true,
                },
                _ = ping.tick() => {
                    if !answered {
                        return End::Gone;
                    }
                    answered = false;
                    if let Err(end) = self.send(registration, sink, Message::Ping(Default::default())).await {
                        return end;
                    }
                }
                live = registration.queue.recv() => {
                    let Some(live) = live else {
                        return End::TooSlow;
                    };
                    if let Err(end) = self.deliver(registration, sink, &mut cursor, live).await {
                        return end;
                    }
                }
            }
        }
    }

    async fn deliver(
        &self,
        registration: &mut Registration,
        sink: &mut Sink,
        cursor: &mut Delivered,
        live: Live,
    ) -> Result<(), End> {
        if cursor.epoch.as_ref() != Some(&live.offset.epoch) {
            // A new epoch (Redis lost its data), or the first one: the history decides.
            return self.catch_up(registration, sink, cursor).await;
        }
        if live.offset.entry <= cursor.entry {
            return Ok(());
        }
        self.send(
            registration,
            sink,
            Message::Text(Utf8Bytes::from(&*live.frame)),
        )
        .await?;
        cursor.entry = live.offset.entry;
        Ok(())
    }

    /// Sends what the history holds after `cursor`, preceded by `recovery.incomplete` when
    /// the history no longer reaches back to it.
    async fn catch_up(
        &self,
        registration: &mut Registration,
        sink: &mut Sink,
        cursor: &mut Delivered,
    ) -> Result<(), End> {
        let CatchUp {
            complete,
            entries,
            delivered: next,
        } = tokio::select! {
            read = self.hub.history.after(self.principal.user_id, cursor) => match read {
                Ok(read) => read,
                Err(error) => return Err(self.unavailable(&error)),
            },
            () = self.hub.closing.cancelled() => return Err(End::ShuttingDown),
        };
        if !complete {
            self.send(
                registration,
                sink,
                Message::Text(Utf8Bytes::from_static(notify::RECOVERY_INCOMPLETE)),
            )
            .await?;
        }
        for (offset, json) in entries {
            self.send(
                registration,
                sink,
                Message::Text(notify::frame(&json, &offset).into()),
            )
            .await?;
        }
        *cursor = next;
        Ok(())
    }

    /// Sends one frame, unless the socket is evicted, the server closes, or the client
    /// takes longer than [`WRITE_TIMEOUT`] to take it.
    async fn send(
        &self,
        registration: &Registration,
        sink: &mut Sink,
        message: Message,
    ) -> Result<(), End> {
        tokio::select! {
            sent = tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(End::TooSlow),
            },
            () = registration.evicted.cancelled() => Err(End::TooSlow),
            () = registration.revoked.cancelled() => Err(End::Revoked),
            () = self.hub.closing.cancelled() => Err(End::ShuttingDown),
        }
    }

    fn unavailable(&self, error: &ReadError) -> End {
        tracing::warn!(error = %error, "notification history unavailable; closing the socket");
        End::HistoryUnavailable
    }
}
