//! Partition leases: instances of one consumer group share P partitions, each owned by
//! exactly one live instance at a time, with a fencing epoch.
//!
//! Every instance calls [`Member::tick`] about once a second. A tick renews the instance's
//! membership (it lives [`Member::ttl`] past its last tick), reads the live members, and
//! assigns partition `p` to the `p mod n`-th of the `n` live members in name order: every
//! instance computes the same assignment from the same rows, and the shares differ by at
//! most one. The instance then releases what is no longer its own and claims what is,
//! when the partition is free, already its own, or its owner's lease has run out. A claim
//! by a new owner increases the partition's **epoch**. All times are the database's.
//!
//! Fencing: [`hold`] runs inside the transaction that commits the work of a partition. It
//! succeeds only while the lease is this owner's, at this epoch and unexpired, and it
//! locks the lease row (`FOR SHARE`), so a claim by another instance waits for that
//! commit: work committed under a lost lease is impossible.
//!
//! When an instance dies, its membership runs out after the TTL; the next tick of each
//! survivor assigns its partitions anew, and their leases have run out by then too. An
//! instance that stops gracefully [`Member::leave`]s, and its partitions move at once.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};

/// One partition held by this member: its number and the epoch it was claimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    pub partition: u32,
    pub epoch: i64,
}

/// This instance, as a member of a consumer group sharing `partitions` partitions.
#[derive(Debug, Clone)]
pub struct Member {
    pub group: String,
    /// Unique among the group's instances (and, ordered by name, its place in the
    /// assignment).
    pub name: String,
    pub partitions: u32,
    /// How long a membership and its leases live without a tick.
    pub ttl: Duration,
}

/// Who owns a partition now (for `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub partition: u32,
    pub owner: Option<String>,
    pub epoch: i64,
    /// Whether its lease is still running.
    pub live: bool,
}

impl Member {
    /// A member of `group` named after this host and process, plus a random suffix (so a
    /// restarted process never takes over its dead predecessor's leases by name).
    pub fn new(group: &str, partitions: u32, ttl: Duration) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map_or_else(|| "host".to_owned(), |name| name.trim().to_owned());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self {
            group: group.to_owned(),
            name: format!("{host}-{}-{}", std::process::id(), &suffix[..8]),
            partitions,
            ttl,
        }
    }

    /// Renews the membership, releases the partitions now assigned to others (except the
    /// `busy` ones: their work is still being stopped, and [`Member::release`] frees them
    /// once it has) and claims (or renews) those assigned to this member. Returns the
    /// leases held, in partition order: a partition assigned here whose previous owner
    /// still holds it is not among them yet.
    pub async fn tick(&self, pool: &PgPool, busy: &[u32]) -> Result<Vec<Lease>, sqlx::Error> {
        let ttl = self.ttl.as_secs_f64();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO consumer_members (consumer_group, member, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (consumer_group, member) DO UPDATE SET expires_at = EXCLUDED.expires_at",
        )
        .bind(&self.group)
        .bind(&self.name)
        .bind(ttl)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM consumer_members WHERE consumer_group = $1 AND expires_at < now()",
        )
        .bind(&self.group)
        .execute(&mut *tx)
        .await?;
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT member FROM consumer_members WHERE consumer_group = $1 ORDER BY member",
        )
        .bind(&self.group)
        .fetch_all(&mut *tx)
        .await?;
        let mine = assigned(&members, &self.name, self.partitions);
        sqlx::query(
            "INSERT INTO partition_leases (consumer_group, partition)
             SELECT $1, p FROM generate_series(0, $2 - 1) AS p
             ON CONFLICT DO NOTHING",
        )
        .bind(&self.group)
        .bind(self.partitions as i32)
        .execute(&mut *tx)
        .await?;
        let busy: Vec<i32> = busy.iter().map(|p| *p as i32).collect();
        sqlx::query(
            "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity'
             WHERE consumer_group = $1 AND owner = $2
               AND NOT (partition = ANY($3)) AND NOT (partition = ANY($4))",
        )
        .bind(&self.group)
        .bind(&self.name)
        .bind(&mine)
        .bind(&busy)
        .execute(&mut *tx)
        .await?;
        let mut held: Vec<(i32, i64)> = sqlx::query_as(
            "UPDATE partition_leases
             SET epoch = CASE WHEN owner IS DISTINCT FROM $2 THEN epoch + 1 ELSE epoch END,
                 owner = $2,
                 expires_at = now() + make_interval(secs => $4)
             WHERE consumer_group = $1 AND partition = ANY($3)
               AND (owner IS NULL OR owner = $2 OR expires_at < now())
             RETURNING partition, epoch",
        )
        .bind(&self.group)
        .bind(&self.name)
        .bind(&mine)
        .bind(ttl)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        held.sort_unstable();
        Ok(held
            .into_iter()
            .map(|(partition, epoch)| Lease {
                partition: partition as u32,
                epoch,
            })
            .collect())
    }

    /// Ends this member's leases of `partitions` now (their work has stopped).
    pub async fn release(&self, pool: &PgPool, partitions: &[u32]) -> Result<(), sqlx::Error> {
        let partitions: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
        sqlx::query(
            "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity'
             WHERE consumer_group = $1 AND owner = $2 AND partition = ANY($3)",
        )
        .bind(&self.group)
        .bind(&self.name)
        .bind(&partitions)
        .execute(pool)
        .await
        .map(drop)
    }

    /// Leaves the group: the membership and every lease of this member end now.
    pub async fn leave(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE partition_leases SET owner = NULL, expires_at = '-infinity'
             WHERE consumer_group = $1 AND owner = $2",
        )
        .bind(&self.group)
        .bind(&self.name)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM consumer_members WHERE consumer_group = $1 AND member = $2")
            .bind(&self.group)
            .bind(&self.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// The fence of `lease`, held by this member: what its work checks before committing.
    pub fn fence(&self, lease: Lease) -> Fence {
        Fence {
            group: self.group.clone(),
            owner: self.name.clone(),
            lease,
        }
    }
}

/// A partition's lease as its owner's work carries it: whom to check, at which epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub group: String,
    pub owner: String,
    pub lease: Lease,
}

impl Fence {
    pub fn partition(&self) -> u32 {
        self.lease.partition
    }

    /// Inside the transaction that commits work of the partition: see [`hold`]. Outside
    /// one (work that commits elsewhere, such as a Redis publish), a check just before.
    pub async fn hold(&self, executor: impl PgExecutor<'_>) -> Result<bool, sqlx::Error> {
        hold(executor, &self.group, &self.owner, self.lease).await
    }
}

/// The partitions the `name`d member owns among `members` (sorted): `p` goes to the
/// `p mod n`-th member.
fn assigned(members: &[String], name: &str, partitions: u32) -> Vec<i32> {
    let Some(index) = members.iter().position(|m| m == name) else {
        return vec![];
    };
    (0..partitions as usize)
        .filter(|p| p % members.len() == index)
        .map(|p| p as i32)
        .collect()
}

/// Whether `owner` still holds `lease` of `group` (same epoch, unexpired); locks the
/// lease row until the surrounding transaction ends, so nobody claims it meanwhile.
pub async fn hold(
    executor: impl PgExecutor<'_>,
    group: &str,
    owner: &str,
    lease: Lease,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, i32>(
        "SELECT 1 FROM partition_leases
         WHERE consumer_group = $1 AND partition = $2 AND owner = $3 AND epoch = $4
           AND expires_at > now()
         FOR SHARE",
    )
    .bind(group)
    .bind(lease.partition as i32)
    .bind(owner)
    .bind(lease.epoch)
    .fetch_optional(executor)
    .await
    .map(|row| row.is_some())
}

/// Every partition of `group` and its owner, in partition order.
pub async fn owners(executor: impl PgExecutor<'_>, group: &str) -> Result<Vec<Owner>, sqlx::Error> {
    let rows: Vec<(i32, Option<String>, i64, bool)> = sqlx::query_as(
        "SELECT partition, owner, epoch, expires_at > now() FROM partition_leases
         WHERE consumer_group = $1 ORDER BY partition",
    )
    .bind(group)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(partition, owner, epoch, live)| Owner {
            partition: partition as u32,
            owner,
            epoch,
            live,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::assigned;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn partitions_go_round_robin_over_the_members_in_name_order() {
        let members = names(&["a", "b", "c"]);
        assert_eq!(assigned(&members, "a", 8), vec![0, 3, 6]);
        assert_eq!(assigned(&members, "b", 8), vec![1, 4, 7]);
        assert_eq!(assigned(&members, "c", 8), vec![2, 5]);
    }

    #[test]
    fn a_member_not_among_the_live_ones_owns_nothing() {
        assert!(assigned(&names(&["a"]), "z", 4).is_empty());
    }
}
