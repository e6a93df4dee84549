//! Getting or creating a durable pull consumer with Keel's settings.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use events::partitions::Partitions;

/// A durable pull consumer as Keel runs it: every message acknowledged explicitly (after
/// its effects are committed), redelivered after `ack_wait` without one, from the start of
/// the stream, and never dropped by the server (giving up on a message is the consumer's
/// call: the dead-letter queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durable {
    /// The durable name (`projector-<name>`, `relay-notifications`; with partitions
    /// `projector-<name>-<p>`, `relay-notifications-<p>`).
    pub name: String,
    pub filter_subject: String,
    /// The partitions the stream must have: the filter relies on them.
    pub partitions: Partitions,
    pub ack_wait: Duration,
    /// How many messages may be delivered and not yet acknowledged.
    pub max_ack_pending: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("the event stream {stream} is not available")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error(
        "the event stream {stream} has {recorded} partition(s), this consumer expects {expected}"
    )]
    Partitions {
        stream: String,
        recorded: String,
        expected: Partitions,
    },
    #[error("cannot create or open the durable consumer {consumer}")]
    Consumer {
        consumer: String,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
}

impl Durable {
    /// The consumer's configuration on the server.
    pub fn config(&self) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(self.name.clone()),
            filter_subject: self.filter_subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: -1,
            max_ack_pending: self.max_ack_pending,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }

    /// The event stream `stream` and this consumer on it, created on first use. A consumer
    /// made by an older Keel may filter less than this one reads (the `users` projection
    /// read `<prefix>.user.>` before it read revoked tokens too): its filter is updated,
    /// and its acknowledged position stays.
    pub async fn provision(
        &self,
        jetstream: &jetstream::Context,
        stream: &str,
    ) -> Result<(jetstream::stream::Stream, consumer::PullConsumer), ProvisionError> {
        let handle =
            jetstream
                .get_stream(stream)
                .await
                .map_err(|source| ProvisionError::Stream {
                    stream: stream.to_owned(),
                    source,
                })?;
        let recorded = Partitions::recorded(handle.cached_info().config.description.as_deref());
        if recorded != Ok(self.partitions) {
            return Err(ProvisionError::Partitions {
                stream: stream.to_owned(),
                recorded: recorded.map_or_else(|e| e.to_string(), |p| p.to_string()),
                expected: self.partitions,
            });
        }
        let failed = |source| ProvisionError::Consumer {
            consumer: self.name.clone(),
            source,
        };
        let config = self.config();
        let mut consumer: consumer::PullConsumer = handle
            .get_or_create_consumer(&self.name, config.clone())
            .await
            .map_err(failed)?;
        if consumer.cached_info().config.filter_subject != config.filter_subject {
            tracing::info!(consumer = %self.name, filter = %config.filter_subject, "updating the consumer's filter");
            consumer = handle.create_consumer(config).await.map_err(failed)?;
        }
        Ok((handle, consumer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_consumer_acks_explicitly_from_the_start_and_is_never_given_up_by_the_server() {
        let config = Durable {
            name: "projector-posts".to_owned(),
            filter_subject: "events.post.>".to_owned(),
            partitions: Partitions::ONE,
            ack_wait: Duration::from_secs(10),
            max_ack_pending: 2000,
        }
        .config();
        assert_eq!(config.durable_name.as_deref(), Some("projector-posts"));
        assert_eq!(config.filter_subject, "events.post.>");
        assert_eq!(config.ack_policy, consumer::AckPolicy::Explicit);
        assert_eq!(config.ack_wait, Duration::from_secs(10));
        assert_eq!(config.max_deliver, -1);
        assert_eq!(config.max_ack_pending, 2000);
        assert_eq!(config.deliver_policy, consumer::DeliverPolicy::All);
    }
}
