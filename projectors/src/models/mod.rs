//! How each projection folds events into its model, a batch at a time: the rows the batch
//! touches are loaded in one query per table, the events folded into them in memory, and
//! the result written back with one statement per table (`unnest` upserts), so a batch
//! costs a handful of round trips whatever its size. Run inside the caller's transaction
//! against the model's schema (the live `rm_<name>` or a rebuild's fresh copy). The caller
//! guarantees each stream's events arrive once and in version order; these functions only
//! say what the events change.

mod authors;
mod dashboard;
mod posts;
mod users;

use sqlx::PgConnection;

use domain::ids::UserId;
use domain::recorded::RecordedEvent;
use domain::{Event, PostEvent, UserEvent};
use events::read_model::Projection;

/// An event to apply, with where it sits in the log.
pub type Applied<'a> = (&'a RecordedEvent, Event);

/// Applies `batch`, in order, to `projection`'s model in `schema`. Pushes the users whose
/// cached dashboard it makes stale onto `stale`.
pub async fn apply(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
    batch: &[Applied<'_>],
    stale: &mut Vec<UserId>,
) -> Result<(), sqlx::Error> {
    match projection {
        Projection::Users => {
            users::apply(conn, &format!("{schema}.users"), &user_events(batch)).await
        }
        Projection::Authors => authors::apply(conn, schema, batch).await,
        Projection::Posts => posts::apply(conn, schema, &post_events(batch)).await,
        Projection::Dashboard => dashboard::apply(conn, schema, batch, stale).await,
    }
}

/// One column of `rows`, for binding as an array (the rows go back with `unnest`).
fn column<'a, R, T>(rows: &'a [R], value: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(value).collect()
}

fn user_events<'a>(batch: &'a [Applied<'_>]) -> Vec<(&'a RecordedEvent, &'a UserEvent)> {
    batch
        .iter()
        .filter_map(|(recorded, event)| match event {
            Event::User(e) => Some((*recorded, e)),
            Event::Post(_) | Event::Token(_) => None,
        })
        .collect()
}

fn post_events<'a>(batch: &'a [Applied<'_>]) -> Vec<(&'a RecordedEvent, &'a PostEvent)> {
    batch
        .iter()
        .filter_map(|(recorded, event)| match event {
            Event::Post(e) => Some((*recorded, e)),
            Event::User(_) | Event::Token(_) => None,
        })
        .collect()
}
