//! Partition leases (`events::lease`) on a real Postgres: every partition has one owner,
//! shares are even, a dead member's partitions move once its lease runs out, a graceful
//! leave moves them at once, and a deposed owner is fenced off.

use std::time::Duration;

use events::lease::{self, Lease, Member};
use keel_tests::{eventually, fresh_database};

const GROUP: &str = "projector-users";

async fn pool() -> sqlx::PgPool {
    events::database::open(&fresh_database().await.unwrap(), None, 4)
        .await
        .unwrap()
}

fn member(name: &str, ttl: Duration) -> Member {
    Member {
        group: GROUP.to_owned(),
        name: name.to_owned(),
        partitions: 4,
        ttl,
    }
}

fn partitions(leases: &[Lease]) -> Vec<u32> {
    leases.iter().map(|l| l.partition).collect()
}

#[tokio::test]
async fn two_members_share_the_partitions_evenly_and_without_overlap() {
    let pool = pool().await;
    let (a, b) = (
        member("a", Duration::from_secs(30)),
        member("b", Duration::from_secs(30)),
    );
    assert_eq!(
        partitions(&a.tick(&pool, &[]).await.unwrap()),
        vec![0, 1, 2, 3]
    );
    // b joins: a's next tick gives up b's share, which b then claims.
    assert!(
        b.tick(&pool, &[]).await.unwrap().is_empty(),
        "a still holds them"
    );
    assert_eq!(partitions(&a.tick(&pool, &[]).await.unwrap()), vec![0, 2]);
    let held = b.tick(&pool, &[]).await.unwrap();
    assert_eq!(partitions(&held), vec![1, 3]);
    assert!(
        held.iter().all(|l| l.epoch == 2),
        "a new owner, a new epoch"
    );
    let owners = lease::owners(&pool, GROUP).await.unwrap();
    let names: Vec<_> = owners.iter().map(|o| o.owner.clone().unwrap()).collect();
    assert_eq!(names, ["a", "b", "a", "b"]);
}

#[tokio::test]
async fn a_dead_members_partitions_move_when_its_lease_runs_out_and_it_is_fenced_off() {
    let pool = pool().await;
    let (a, b) = (
        member("a", Duration::from_secs(1)),
        member("b", Duration::from_secs(1)),
    );
    a.tick(&pool, &[]).await.unwrap();
    b.tick(&pool, &[]).await.unwrap();
    a.tick(&pool, &[]).await.unwrap();
    let held_by_b = b.tick(&pool, &[]).await.unwrap();
    assert_eq!(partitions(&held_by_b), vec![1, 3]);
    let mut tx = pool.begin().await.unwrap();
    assert!(b.fence(held_by_b[0]).hold(&mut *tx).await.unwrap());
    tx.rollback().await.unwrap();

    // b stops ticking (as if SIGKILLed); a takes everything once b's lease runs out.
    let taken = eventually(
        Duration::from_secs(10),
        "a takes over b's partitions",
        || {
            let (a, pool) = (&a, &pool);
            async move {
                let held = a.tick(pool, &[]).await.map_err(|e| e.to_string())?;
                if held.len() == 4 {
                    Ok(held)
                } else {
                    Err(format!("a holds {:?}", partitions(&held)))
                }
            }
        },
    )
    .await;
    assert_eq!(taken[1].epoch, held_by_b[0].epoch + 1);
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !b.fence(held_by_b[0]).hold(&mut *tx).await.unwrap(),
        "the deposed owner's commit is refused"
    );
}

#[tokio::test]
async fn a_member_that_leaves_hands_its_partitions_over_at_once() {
    let pool = pool().await;
    let (a, b) = (
        member("a", Duration::from_secs(30)),
        member("b", Duration::from_secs(30)),
    );
    a.tick(&pool, &[]).await.unwrap();
    b.tick(&pool, &[]).await.unwrap();
    a.tick(&pool, &[]).await.unwrap();
    b.tick(&pool, &[]).await.unwrap();
    b.leave(&pool).await.unwrap();
    assert_eq!(
        partitions(&a.tick(&pool, &[]).await.unwrap()),
        vec![0, 1, 2, 3]
    );
}
