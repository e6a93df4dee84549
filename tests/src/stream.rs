//! Reading a JetStream stream back, message by message, to compare it with the log.

use async_nats::jetstream;

/// One stored message: its stream sequence, `Nats-Msg-Id` and CloudEvent body.
#[derive(Debug, Clone)]
pub struct Stored {
    pub sequence: u64,
    pub msg_id: String,
    pub content_type: String,
    pub subject: String,
    pub body: serde_json::Value,
}

/// Every message in the stream, in stream order (empty if the stream does not exist).
pub async fn messages(nats_url: &str, stream: &str) -> anyhow::Result<Vec<Stored>> {
    let client = crate::principals::nats_connect(nats_url).await?;
    let context = jetstream::new(client);
    let Ok(mut stream) = context.get_stream(stream).await else {
        return Ok(vec![]);
    };
    let state = stream.info().await?.state.clone();
    let mut stored = Vec::with_capacity(state.messages as usize);
    for sequence in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        // Deleted messages leave holes in the sequence.
        let Ok(message) = stream.get_raw_message(sequence).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        stored.push(Stored {
            sequence,
            msg_id: header("Nats-Msg-Id"),
            content_type: header("content-type"),
            subject: message.subject.to_string(),
            body: serde_json::from_slice(&message.payload)?,
        });
    }
    Ok(stored)
}

/// How many messages the stream holds (0 if it does not exist).
pub async fn count(nats_url: &str, stream: &str) -> anyhow::Result<u64> {
    let client = crate::principals::nats_connect(nats_url).await?;
    let context = jetstream::new(client);
    let Ok(mut stream) = context.get_stream(stream).await else {
        return Ok(0);
    };
    Ok(stream.info().await?.state.messages)
}

/// The event ids of the log, in position order.
pub async fn log_ids(pool: &sqlx::PgPool) -> anyhow::Result<Vec<String>> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM events ORDER BY position")
        .fetch_all(pool)
        .await?;
    Ok(ids.into_iter().map(|id| id.to_string()).collect())
}
