//! Keel's consumer runtime: how a worker reads the JetStream event stream that the
//! command API's outbox publisher fills (command -> log -> outbox -> **JetStream ->
//! projectors / relay** -> Redis). The projectors and the relay are its users; what they
//! do with an event stays in them.
//!
//! - [`durable`]: getting or creating a durable pull consumer with Keel's settings.
//! - [`pull`]: the pull loop, handing messages over in batches. [`settle`]: telling
//!   JetStream what became of a message (ack, nak with a delay, still in progress).
//! - [`in_flight`]: what a consumer's earlier holder received and did not acknowledge,
//!   read from the stream when a partition is taken over.
//! - [`retry`]: one retry loop with exponential backoff, until done or stopped.
//! - [`dead_letter_queue`]: the `<stream>_DLQ` stream, where a consumer gives up on a
//!   message.
//! - [`partitioned`]: N instances sharing the stream's partitions, a task per partition
//!   owned.
//! - [`chain`]: an error and its sources on one line, for logs.

pub mod dead_letter_queue;
pub mod durable;
pub mod in_flight;
pub mod partitioned;
pub mod pull;
pub mod retry;
pub mod settle;

pub use crate::dead_letter_queue::{DeadLetterError, DeadLetterQueue, Letter};
pub use crate::durable::{Durable, ProvisionError};
pub use crate::in_flight::{InFlight, InFlightError, in_flight};
pub use crate::pull::{Batching, Next, Pull, PullError};
pub use crate::retry::{Backoff, Retries, retry_until};

/// An error and its sources, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("applying the batch failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_source_in_order() {
        let error = Outer(std::io::Error::other("connection reset"));
        assert_eq!(chain(&error), "applying the batch failed: connection reset");
    }
}
