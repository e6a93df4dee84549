//! The read models' shared vocabulary: which projections exist, where each lives, how far
//! each has applied the log, and the Redis key of the cached dashboard. The projectors
//! write the models; the command API reads them.
//!
//! Each projection owns the Postgres schema `rm_<name>` (see migration 0005): its tables,
//! its checkpoint, the version it applied per stream, and its dead letters. A projection
//! consumes whole streams of the kinds it reads (every event of each such stream, in
//! version order), which is what lets it tell a duplicate (version already applied) from
//! a late redelivery (the next version) from one that came too early (a gap).

use std::fmt;

use sqlx::PgExecutor;

use domain::ids::{Position, UserId};

/// A read model and the projection that builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    Users,
    Authors,
    Posts,
    Dashboard,
}

/// A name that is not one of the projections.
#[derive(Debug, thiserror::Error)]
#[error("unknown projection {0:?} (expected users, authors, posts or dashboard)")]
pub struct UnknownProjection(pub String);

impl Projection {
    pub const ALL: [Projection; 4] = [
        Projection::Users,
        Projection::Authors,
        Projection::Posts,
        Projection::Dashboard,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Users => "users",
            Projection::Authors => "authors",
            Projection::Posts => "posts",
            Projection::Dashboard => "dashboard",
        }
    }

    /// The schema the live model lives in.
    pub fn schema(self) -> &'static str {
        match self {
            Projection::Users => "rm_users",
            Projection::Authors => "rm_authors",
            Projection::Posts => "rm_posts",
            Projection::Dashboard => "rm_dashboard",
        }
    }

    /// The JetStream durable consumer that feeds it.
    pub fn consumer(self) -> String {
        format!("projector-{}", self.name())
    }

    /// Prefixes of the streams it reads (`user-`, `post-`, `token-`): all of each such
    /// stream. `users` reads the revoked tokens too: it is the projection that announces
    /// policy changes (`events::policy`), and a revoked `jti` is one.
    pub fn stream_prefixes(self) -> &'static [&'static str] {
        match self {
            Projection::Users => &["user-", "token-"],
            Projection::Posts => &["post-"],
            Projection::Authors | Projection::Dashboard => &["user-", "post-"],
        }
    }

    /// Whether an event of `stream_id` belongs to this projection.
    pub fn reads(self, stream_id: &str) -> bool {
        self.stream_prefixes()
            .iter()
            .any(|prefix| stream_id.starts_with(prefix))
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Projection {
    type Err = UnknownProjection;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Projection::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownProjection(s.to_owned()))
    }
}

/// Whether `projection`, in `schema`, has applied every event of its streams at or below
/// `position` (and the log reaches that far). Exact, not the stored checkpoint: a
/// projection whose streams saw no event lately has nothing to apply, so its stored
/// checkpoint may lag behind the log.
pub async fn applied_through(
    executor: impl PgExecutor<'_>,
    projection: Projection,
    schema: &str,
    at: Position,
) -> Result<bool, sqlx::Error> {
    Ok(self::position(executor, projection, schema).await? >= at)
}

/// The exact checkpoint of the model in `schema`: just before the first event of the
/// projection's streams it has neither applied nor dead-lettered, or the log's head when
/// there is none. `$1` binds the stream prefixes.
fn exact_position(schema: &str) -> String {
    format!(
        "coalesce(
             (SELECT e.position - 1 FROM events e
                  LEFT JOIN {schema}.applied a ON a.stream_id = e.stream_id
              WHERE e.position > (SELECT position FROM {schema}.checkpoint)
                AND split_part(e.stream_id, '-', 1) || '-' = ANY($1) AND coalesce(a.version, 0) < e.version
              ORDER BY e.position LIMIT 1),
             (SELECT max(position) FROM events),
             0)"
    )
}

/// Where the model in `schema` really stands (read only; see [`advance_checkpoint`]).
pub async fn position(
    executor: impl PgExecutor<'_>,
    projection: Projection,
    schema: &str,
) -> Result<Position, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT {}", exact_position(schema)))
        .bind(projection.stream_prefixes())
        .fetch_one(executor)
        .await
        .map(Position)
}

/// Stores where the model in `schema` really stands as its checkpoint, and returns it.
pub async fn advance_checkpoint(
    executor: impl PgExecutor<'_>,
    projection: Projection,
    schema: &str,
) -> Result<Position, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "UPDATE {schema}.checkpoint SET updated_at = now(), position = {}
         RETURNING position",
        exact_position(schema)
    ))
    .bind(projection.stream_prefixes())
    .fetch_one(executor)
    .await
    .map(Position)
}

/// The stored checkpoint of the live model.
pub async fn checkpoint(
    executor: impl PgExecutor<'_>,
    projection: Projection,
) -> Result<Position, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT position FROM {}.checkpoint",
        projection.schema()
    ))
    .fetch_one(executor)
    .await
    .map(Position)
}

/// How long a cached dashboard lives at most.
pub const DASHBOARD_TTL_SECS: u64 = 30;

/// The Redis key of a user's cached dashboard. Namespaced by the JetStream stream name,
/// so systems (and tests) that use different streams never share cache entries.
pub fn dashboard_key(stream: &str, user: UserId) -> String {
    format!("{}{user}", dashboard_key_prefix(stream))
}

/// What every dashboard key of `stream` starts with.
pub fn dashboard_key_prefix(stream: &str) -> String {
    format!("keel:{stream}:dashboard:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_parse_from_their_names() {
        for projection in Projection::ALL {
            assert_eq!(projection.name().parse::<Projection>().unwrap(), projection);
        }
        assert!("comments".parse::<Projection>().is_err());
    }

    #[test]
    fn a_projection_reads_only_its_stream_kinds() {
        let user = "user-0190c2a0-0000-7000-8000-000000000000";
        let post = "post-0190c2a0-0000-7000-8000-000000000000";
        let token = "token-0190c2a0-0000-7000-8000-000000000000";
        assert!(Projection::Users.reads(user) && !Projection::Users.reads(post));
        assert!(Projection::Users.reads(token) && !Projection::Posts.reads(token));
        assert!(Projection::Posts.reads(post) && !Projection::Posts.reads(user));
        assert!(Projection::Dashboard.reads(user) && Projection::Dashboard.reads(post));
    }
}
