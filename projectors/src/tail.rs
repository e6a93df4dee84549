//! `projectors tail`: follows the event stream with an ephemeral ordered consumer and
//! prints one line per message.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bus::pull::stream_sequence;
use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Connect(#[from] events::settings::ConnectError),
    #[error("cannot open JetStream stream {0}")]
    Stream(String, #[source] jetstream::context::GetStreamError),
    #[error("cannot follow the stream")]
    Consume(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One message as a line: stream sequence, subject, and the CloudEvent's position,
/// type and subject.
pub fn line(sequence: u64, subject: &str, payload: &[u8]) -> String {
    let body: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
    let text = |key: &str| body.get(key).map(|v| v.to_string()).unwrap_or_default();
    format!(
        "seq={sequence} subject={subject} position={} type={} stream={}",
        text("position"),
        text("type").trim_matches('"'),
        text("subject").trim_matches('"'),
    )
}

/// Prints messages from the start of the stream in `settings` until `count` were printed
/// or nothing arrived for `idle`.
pub async fn run(
    settings: &events::settings::Settings,
    count: usize,
    idle: Duration,
) -> Result<usize, TailError> {
    let context = settings.jetstream(&settings.private_ca()?).await?;
    let stream = &settings.stream;
    let stream_handle = context
        .get_stream(stream)
        .await
        .map_err(|e| TailError::Stream(stream.to_owned(), e))?;
    let consumer = stream_handle
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .map_err(|e| TailError::Consume(Box::new(e)))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| TailError::Consume(Box::new(e)))?;
    let mut printed = 0;
    while printed < count {
        let Ok(next) = tokio::time::timeout(idle, messages.next()).await else {
            break;
        };
        let Some(message) = next else { break };
        let message = message.map_err(|e| TailError::Consume(Box::new(e)))?;
        let sequence = stream_sequence(&message);
        println!("{}", line(sequence, &message.subject, &message.payload));
        printed += 1;
    }
    Ok(printed)
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn a_line_shows_position_type_and_stream() {
        let payload = br#"{"position": 7, "type": "user.updated", "subject": "user-1"}"#;
        assert_eq!(
            line(3, "events.user.updated", payload),
            "seq=3 subject=events.user.updated position=7 type=user.updated stream=user-1"
        );
    }
}
