//! The pull loop: a durable consumer's messages, handed to the worker in batches.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// How messages are pulled and handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Messages asked for per pull request.
    pub fetch: usize,
    /// Most messages handed over at once.
    pub max: usize,
    /// How long a batch waits for more messages once its first one arrived (zero: only
    /// those already received).
    pub linger: Duration,
}

/// What the pull loop has for the worker.
#[derive(Debug)]
pub enum Next {
    /// One or more messages, in the order they were delivered.
    Batch(Vec<jetstream::Message>),
    /// Nothing arrived within the wait.
    Idle,
    /// The stop came while waiting.
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("cannot start pulling from the consumer")]
    Start(#[source] consumer::StreamError),
    #[error("consuming the stream failed")]
    Consume(#[source] consumer::pull::MessagesError),
    #[error("the message stream ended")]
    Ended,
}

/// A consumer's messages, being pulled.
pub struct Pull {
    messages: consumer::pull::Stream,
    batching: Batching,
    /// An error that came after the messages of the batch handed over last.
    failure: Option<PullError>,
}

impl Pull {
    /// Starts pulling from `consumer`.
    pub async fn start(
        consumer: &consumer::PullConsumer,
        batching: Batching,
    ) -> Result<Self, PullError> {
        let messages = consumer
            .stream()
            .max_messages_per_batch(batching.fetch)
            .messages()
            .await
            .map_err(PullError::Start)?;
        Ok(Self {
            messages,
            batching,
            failure: None,
        })
    }

    /// The next batch: waits up to `wait` for a first message ([`Next::Idle`] if none
    /// came), then gathers more for up to the linger, up to the batch's size. `stop` is
    /// heeded only while waiting for the first message, so messages once received are
    /// always handed over. An error that comes after some messages is returned by the
    /// next call, once they are handed over.
    pub async fn next(
        &mut self,
        stop: &CancellationToken,
        wait: Duration,
    ) -> Result<Next, PullError> {
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let first = tokio::select! {
            () = stop.cancelled() => return Ok(Next::Stopped),
            first = tokio::time::timeout(wait, self.messages.next()) => first,
        };
        let Ok(first) = first else {
            return Ok(Next::Idle);
        };
        let mut batch = Vec::with_capacity(self.batching.max);
        let gathered = tokio::time::Instant::now() + self.batching.linger;
        let mut next = first;
        loop {
            match next {
                Some(Ok(message)) => batch.push(message),
                Some(Err(error)) => {
                    self.failure = Some(PullError::Consume(error));
                    break;
                }
                None => {
                    self.failure = Some(PullError::Ended);
                    break;
                }
            }
            if batch.len() >= self.batching.max {
                break;
            }
            match tokio::time::timeout_at(gathered, self.messages.next()).await {
                Ok(more) => next = more,
                Err(_) => break,
            }
        }
        match self.failure.take() {
            Some(failure) if batch.is_empty() => Err(failure),
            failure => {
                self.failure = failure;
                Ok(Next::Batch(batch))
            }
        }
    }

    /// On a graceful stop: hands back (nak, no delay) what was received but not handed
    /// over, so that the partition's next owner gets it at once instead of after the ack
    /// wait. Bounded by [`HAND_BACK`]: what keeps arriving after that waits for its ack
    /// wait as after a crash.
    pub async fn hand_back(mut self) {
        let deadline = tokio::time::Instant::now() + HAND_BACK;
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline, self.messages.next()).await
        {
            if let Err(error) = crate::settle::nak(&message, Duration::ZERO).await {
                tracing::debug!(error = %crate::chain(&error), "nak not sent");
            }
        }
    }
}

/// How long a stopping consumer spends handing back what it had received.
pub const HAND_BACK: Duration = Duration::from_millis(100);

/// The message's sequence in the stream (0 if it carries no JetStream metadata).
pub fn stream_sequence(message: &jetstream::Message) -> u64 {
    message
        .info()
        .map(|info| info.stream_sequence)
        .unwrap_or_default()
}
