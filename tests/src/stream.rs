//! Reading a JetStream stream back, message by message, to compare it with the log.

use std::collections::HashSet;
use std::time::Duration;

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

/// Waits until the stream holds exactly the log, in order, and checks each message.
pub async fn assert_equals_log(
    nats_url: &str,
    stream: &str,
    pool: &sqlx::PgPool,
    within: Duration,
) {
    let log = log_ids(pool).await.unwrap();
    let expected = log.len() as u64;
    crate::eventually(
        within,
        "the stream holds every logged event",
        || async move {
            let stored = count(nats_url, stream).await.map_err(|e| e.to_string())?;
            if stored >= expected {
                Ok(())
            } else {
                Err(format!("{stored} of {expected} events in the stream"))
            }
        },
    )
    .await;
    let stored = messages(nats_url, stream).await.unwrap();
    let ids: Vec<String> = stored.iter().map(|m| m.msg_id.clone()).collect();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice in the stream");
    assert_eq!(ids, log, "stream order equals log order");
    for message in &stored {
        assert_eq!(message.content_type, "application/cloudevents+json");
        assert_eq!(message.body["id"], message.msg_id);
        let parsed: cloudevents::Event =
            serde_json::from_value(message.body.clone()).expect("a CloudEvent");
        let ty = cloudevents::AttributesReader::ty(&parsed);
        assert!(
            message.subject.ends_with(&format!(".{ty}")),
            "{} is not <prefix>.{ty}",
            message.subject
        );
    }
}
