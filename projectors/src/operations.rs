//! The operator's commands besides rebuild: `projectors status` and `projectors
//! dead-letters list|replay`.

use serde::Serialize;
use sqlx::PgPool;

use crate::ledger::{self, ApplyError};
use crate::models;
use crate::ui_cache::UiCache;
use bus::chain;
use domain::recorded::RecordedEvent;
use events::event_log;
use events::read_model::{self, Projection};

/// One projection's standing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Status {
    pub name: &'static str,
    pub position: i64,
    pub head: i64,
    pub lag: i64,
    pub dead_letters: i64,
    /// With several partitions: each one's owner (none with one partition).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionOwner>,
}

/// Who owns one partition of a projection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionOwner {
    pub partition: u32,
    /// The owning instance, while its lease runs (`None`: nobody now).
    pub owner: Option<String>,
    /// Grows each time the partition changes hands.
    pub epoch: i64,
}

impl std::fmt::Display for Status {
    /// `<name> position=… head=… lag=… dead_letters=…`, and with several partitions
    /// ` partitions=<P> owners=<instance>:<count>,…` (`-` counts the unowned).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} position={} head={} lag={} dead_letters={}",
            self.name, self.position, self.head, self.lag, self.dead_letters
        )?;
        if self.partitions.is_empty() {
            return Ok(());
        }
        let mut owners = std::collections::BTreeMap::<&str, usize>::new();
        for partition in &self.partitions {
            *owners
                .entry(partition.owner.as_deref().unwrap_or("-"))
                .or_default() += 1;
        }
        let owners: Vec<String> = owners
            .iter()
            .map(|(owner, count)| format!("{owner}:{count}"))
            .collect();
        write!(
            f,
            " partitions={} owners={}",
            self.partitions.len(),
            owners.join(",")
        )
    }
}

/// Every projection's position (exact, see `read_model::position`), the log's head, the
/// difference, and how many dead letters it holds.
pub async fn status(pool: &PgPool) -> Result<Vec<Status>, sqlx::Error> {
    let head = event_log::head(pool).await?.0;
    let mut lines = Vec::with_capacity(Projection::ALL.len());
    for projection in Projection::ALL {
        let position = read_model::position(pool, projection, projection.schema())
            .await?
            .0;
        let dead_letters: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.dead_letters",
            projection.schema()
        ))
        .fetch_one(pool)
        .await?;
        let partitions = events::lease::owners(pool, &projection.consumer())
            .await?
            .into_iter()
            .map(|owner| PartitionOwner {
                partition: owner.partition,
                owner: owner.owner.filter(|_| owner.live),
                epoch: owner.epoch,
            })
            .collect();
        lines.push(Status {
            name: projection.name(),
            position,
            head,
            lag: head - position,
            dead_letters,
            partitions,
        });
    }
    Ok(lines)
}

/// One dead letter of one projection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, sqlx::FromRow)]
pub struct DeadLetter {
    #[sqlx(skip)]
    pub projection: &'static str,
    pub event_id: uuid::Uuid,
    pub position: i64,
    pub stream_id: String,
    pub version: i64,
    pub event_type: String,
    pub reason: String,
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} position={} event_id={} type={} stream={} version={} reason={:?}",
            self.projection,
            self.position,
            self.event_id,
            self.event_type,
            self.stream_id,
            self.version,
            self.reason
        )
    }
}

/// The dead letters of `projections`, in log order per projection.
pub async fn dead_letters(
    pool: &PgPool,
    projections: &[Projection],
) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let mut letters = Vec::new();
    for projection in projections {
        let rows: Vec<DeadLetter> = sqlx::query_as(&format!(
            "SELECT event_id, position, stream_id, version, event_type, reason
             FROM {}.dead_letters ORDER BY position",
            projection.schema()
        ))
        .fetch_all(pool)
        .await?;
        letters.extend(rows.into_iter().map(|row| DeadLetter {
            projection: projection.name(),
            ..row
        }));
    }
    Ok(letters)
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub applied: u64,
    pub still_failing: u64,
}

/// Re-drives the dead letters of `projections`: each event is read from the log and
/// applied (its version already counts as applied, so this is the one time it takes
/// effect) and its dead letter removed, in one transaction; one that fails again stays.
/// Replayed events take effect after later events of their stream, so a replay suits
/// events whose effect does not depend on order (most do: inserts and counters); an
/// operator who needs strict order rebuilds the projection instead.
pub async fn replay_dead_letters(
    pool: &PgPool,
    projections: &[Projection],
    cache: &UiCache,
) -> Result<Replayed, sqlx::Error> {
    let mut replayed = Replayed::default();
    for letter in dead_letters(pool, projections).await? {
        let projection: Projection = letter
            .projection
            .parse()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        match redrive(pool, projection, &letter).await {
            Ok(mut stale) => {
                replayed.applied += 1;
                cache.invalidate(&mut stale).await;
                tracing::info!(projection = %projection, event_id = %letter.event_id, "dead letter applied");
            }
            Err(RedriveError::Gone) => {}
            Err(error) => {
                replayed.still_failing += 1;
                tracing::warn!(
                    projection = %projection,
                    event_id = %letter.event_id,
                    error = %chain(&error),
                    "dead letter still fails"
                );
            }
        }
    }
    Ok(replayed)
}

#[derive(Debug, thiserror::Error)]
enum RedriveError {
    #[error("the database failed")]
    Database(#[from] sqlx::Error),
    #[error("the event is no longer in the log")]
    Missing,
    #[error("the dead letter was already replayed (or rebuilt away)")]
    Gone,
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

async fn redrive(
    pool: &PgPool,
    projection: Projection,
    letter: &DeadLetter,
) -> Result<Vec<domain::ids::UserId>, RedriveError> {
    let schema = projection.schema();
    let mut tx = pool.begin().await?;
    ledger::lock(&mut tx, projection).await?;
    // Taken first, under the lock: a concurrent replay or a rebuild that already
    // removed this letter makes this one a no-op, never a second application.
    let claimed = sqlx::query(&format!(
        "DELETE FROM {schema}.dead_letters WHERE event_id = $1"
    ))
    .bind(letter.event_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Err(RedriveError::Gone);
    }
    let event: RecordedEvent =
        event_log::read_all(&mut *tx, domain::ids::Position(letter.position - 1), 1)
            .await?
            .into_iter()
            .find(|e| e.event_id.0 == letter.event_id)
            .ok_or(RedriveError::Missing)?;
    let batch = [(&event, ledger::decode(&event)?)];
    let mut stale = Vec::new();
    models::apply(&mut tx, projection, schema, &batch, &mut stale)
        .await
        .map_err(|source| ApplyError::Model {
            first: event.position.0,
            last: event.position.0,
            source,
        })?;
    tx.commit().await?;
    Ok(stale)
}
