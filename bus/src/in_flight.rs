//! What an earlier holder of a consumer received but did not acknowledge: a consumer that
//! takes a partition over (its owner died, or handed it over mid-pull) reads those first,
//! in stream order, straight from the stream. JetStream would hand them out again only
//! after their ack wait, behind newer messages; when it does, they are duplicates.

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use events::partitions::Partitions;

#[derive(Debug, thiserror::Error)]
#[error("reading the messages in flight failed")]
pub struct InFlightError(#[source] Box<dyn std::error::Error + Send + Sync>);

/// One message in flight: its stream sequence and payload.
pub type InFlight = (u64, Bytes);

/// The messages of `partition` between `consumer`'s ack floor and the last one it
/// delivered, in stream order.
pub async fn in_flight(
    stream: &Stream,
    consumer: &mut PullConsumer,
    partitions: Partitions,
    partition: u32,
) -> Result<Vec<InFlight>, InFlightError> {
    let info = consumer
        .info()
        .await
        .map_err(|e| InFlightError(Box::new(e)))?;
    let (floor, delivered) = (
        info.ack_floor.stream_sequence,
        info.delivered.stream_sequence,
    );
    let mut messages = Vec::new();
    for sequence in floor + 1..=delivered {
        let message = match stream.get_raw_message(sequence).await {
            Ok(message) => message,
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(error) => return Err(InFlightError(Box::new(error))),
        };
        if partitions
            .of_subject(&message.subject)
            .is_none_or(|p| p == partition)
        {
            messages.push((sequence, message.payload));
        }
    }
    Ok(messages)
}
