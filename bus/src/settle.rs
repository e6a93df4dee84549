//! Telling JetStream what became of a message: done, again after a delay, or still in
//! hand.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

/// The acknowledgement did not reach the server; JetStream will redeliver the message
/// after its ack wait.
#[derive(Debug, thiserror::Error)]
#[error("the acknowledgement was not sent")]
pub struct SettleError(#[source] async_nats::Error);

/// Done with: JetStream will not deliver it again (short of a server fault).
pub async fn ack(message: &jetstream::Message) -> Result<(), SettleError> {
    message.ack_with(AckKind::Ack).await.map_err(SettleError)
}

/// Handed back: JetStream delivers it again after `delay`.
pub async fn nak(message: &jetstream::Message, delay: Duration) -> Result<(), SettleError> {
    message
        .ack_with(AckKind::Nak(Some(delay)))
        .await
        .map_err(SettleError)
}

/// Still being worked on: JetStream restarts its ack wait instead of handing it out
/// again meanwhile. Best effort: a lost one at worst means a redelivery, which the
/// consumer's idempotence makes a duplicate.
pub async fn progress(message: &jetstream::Message) {
    if let Err(error) = message.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %error, "progress not sent");
    }
}
