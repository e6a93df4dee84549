//! N instances of a consumer sharing the stream's P partitions: each instance is a member
//! of the consumer's group (`events::lease`), ticks once a [`TICK`], and runs one task per
//! partition it owns, handing each task the partition's [`Fence`].
//!
//! A task ends when its partition goes to another member (or comes back at a new epoch,
//! after this member lost it for a while): it is stopped and awaited before anything
//! else, so one process never runs two tasks of a partition, and a partition handed to
//! another member is released only once its task has stopped (its pull subscription
//! closed), so the next owner never races a consumer of ours for its messages. A task that ends by itself
//! (it found its fence gone) is started again at the next tick if the partition is still
//! this member's. Correctness never rests on the tick's timing: every effect is fenced
//! (checked against the lease in the transaction that commits it, or just before a
//! publish that the next owner's dedup absorbs).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use events::lease::{Fence, Member};
use events::partitions::Partitions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chain;

/// How often a member renews its membership and leases and rebalances.
pub const TICK: Duration = Duration::from_secs(1);
/// How long a membership and its leases outlive the member's last tick: a member that
/// dies hands its partitions over within this (plus a tick).
pub const TTL: Duration = Duration::from_secs(5);

/// A partition's task, running.
struct Running {
    epoch: i64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// This instance's membership of `group` over `partitions`, named uniquely.
pub fn member(group: &str, partitions: Partitions) -> Member {
    Member::new(group, partitions.count(), TTL)
}

/// Runs `work` for every partition this member owns, until `stop`; then stops the tasks,
/// awaits them and leaves the group (its partitions move at once).
pub async fn run<F, Fut>(member: Member, pool: PgPool, stop: CancellationToken, mut work: F)
where
    F: FnMut(Fence, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let before: Vec<u32> = running.keys().copied().collect();
        let held = match member.tick(&pool, &before).await {
            Ok(held) => held,
            Err(error) => {
                // Nothing is stopped here: whatever the tasks commit is fenced.
                tracing::warn!(group = %member.group, error = %chain(&error), "partition leases not renewed; retrying");
                continue;
            }
        };
        let holds = |partition: u32| held.iter().find(|lease| lease.partition == partition);
        let gone: Vec<u32> = running
            .iter()
            .filter(|(partition, run)| {
                run.task.is_finished()
                    || holds(**partition).is_none_or(|lease| lease.epoch != run.epoch)
            })
            .map(|(partition, _)| *partition)
            .collect();
        let released: Vec<u32> = gone
            .iter()
            .copied()
            .filter(|partition| holds(*partition).is_none())
            .collect();
        stop_all(gone.iter().filter_map(|p| running.remove(p)).collect()).await;
        // Only now may another instance claim them: nothing of ours still reads them.
        if !released.is_empty()
            && let Err(error) = member.release(&pool, &released).await
        {
            tracing::warn!(group = %member.group, error = %chain(&error), "releasing partitions failed; their leases run out instead");
        }
        for lease in held {
            running.entry(lease.partition).or_insert_with(|| {
                let task_stop = stop.child_token();
                Running {
                    epoch: lease.epoch,
                    task: tokio::spawn(work(member.fence(lease), task_stop.clone())),
                    stop: task_stop,
                }
            });
        }
        let now: Vec<u32> = running.keys().copied().collect();
        if now != before {
            tracing::info!(group = %member.group, member = %member.name, partitions = ?now, "partitions owned");
        }
    }
    stop_all(running.into_values().collect()).await;
    if let Err(error) = member.leave(&pool).await {
        tracing::warn!(group = %member.group, error = %chain(&error), "leaving the group failed; its leases run out instead");
    }
}

/// Stops the tasks and waits until each has finished its work in hand.
async fn stop_all(tasks: Vec<Running>) {
    for run in &tasks {
        run.stop.cancel();
    }
    for run in tasks {
        let _ = run.task.await;
    }
}
