//! Idempotency keys: the response kept under a principal's key for 24 hours (written in
//! the writer's transaction, with the command's events), replayed for the same request,
//! refused for another, and purged once expired.

use std::collections::HashMap;

use sqlx::PgPool;

use super::Recorded;
use domain::ids::UserId;

/// A request's `Idempotency-Key`, with what identifies the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 of method, path and body: the same key with another request is refused.
    pub request_hash: Vec<u8>,
}

/// The response kept under a key, as the HTTP layer rendered it, and replayed as is.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub status: u16,
    pub location: Option<String>,
    pub body: serde_json::Value,
}

/// What the client is answered for a recorded command, rendered by the HTTP layer.
pub type Render = Box<dyn Fn(&Recorded) -> StoredResponse + Send + Sync>;

/// A submission's idempotency key, and the response to keep under it.
pub struct Idempotent {
    pub key: IdempotencyKey,
    /// Called once the command is recorded, before the commit; its answer is stored in
    /// the same transaction.
    pub render: Render,
}

/// The unexpired responses found, by principal and key: the request hash and the response.
pub type StoredResponses = HashMap<(UserId, String), (Vec<u8>, StoredResponse)>;

#[derive(sqlx::FromRow)]
struct StoredRow {
    #[sqlx(try_from = "uuid::Uuid")]
    principal: UserId,
    key: String,
    request_hash: Vec<u8>,
    status: i16,
    location: Option<String>,
    response: serde_json::Value,
}

/// The unexpired stored responses for `keys` (principal, key).
pub async fn stored_responses(
    tx: &mut sqlx::PgConnection,
    keys: &[(UserId, &str)],
) -> Result<StoredResponses, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (principals, keys): (Vec<uuid::Uuid>, Vec<&str>) = keys
        .iter()
        .map(|(principal, key)| (principal.0, *key))
        .unzip();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT i.principal, i.key, i.request_hash, i.status, i.location, i.response
         FROM idempotency_keys i
         JOIN unnest($1::uuid[], $2::text[]) AS k(principal, key)
           ON i.principal = k.principal AND i.key = k.key
         WHERE i.created_at > now() - interval '24 hours'",
    )
    .bind(principals)
    .bind(keys)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let response = StoredResponse {
                status: r.status as u16,
                location: r.location,
                body: r.response,
            };
            ((r.principal, r.key), (r.request_hash, response))
        })
        .collect())
}

/// Records responses for idempotency keys; an expired record of the same key is replaced.
pub async fn store_responses(
    tx: &mut sqlx::PgConnection,
    records: &[(UserId, &IdempotencyKey, StoredResponse)],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let principals: Vec<uuid::Uuid> = records.iter().map(|(p, _, _)| p.0).collect();
    let keys: Vec<&str> = records.iter().map(|(_, k, _)| k.key.as_str()).collect();
    let hashes: Vec<&[u8]> = records
        .iter()
        .map(|(_, k, _)| k.request_hash.as_slice())
        .collect();
    let statuses: Vec<i16> = records.iter().map(|(_, _, r)| r.status as i16).collect();
    let locations: Vec<Option<&str>> = records
        .iter()
        .map(|(_, _, r)| r.location.as_deref())
        .collect();
    let bodies: Vec<&serde_json::Value> = records.iter().map(|(_, _, r)| &r.body).collect();
    sqlx::query(
        "INSERT INTO idempotency_keys (principal, key, request_hash, status, location, response)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::int2[], $5::text[], $6::jsonb[])
         ON CONFLICT (principal, key) DO UPDATE
           SET request_hash = excluded.request_hash, status = excluded.status,
               location = excluded.location, response = excluded.response, created_at = now()
           WHERE idempotency_keys.created_at <= now() - interval '24 hours'",
    )
    .bind(principals)
    .bind(keys)
    .bind(hashes)
    .bind(statuses)
    .bind(locations)
    .bind(bodies)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes idempotency records older than 24 hours.
pub async fn purge_expired_keys(pool: &PgPool) -> Result<u64, sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= now() - interval '24 hours'")
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
}
