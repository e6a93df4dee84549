//! How each projection folds one event into its model: plain SQL against the model's
//! schema (the live `rm_<name>` or a rebuild's fresh copy), run inside the caller's
//! transaction. The caller guarantees each stream's events arrive once and in version
//! order; these functions only say what an event changes.

mod authors;
mod dashboard;
mod posts;
mod users;

use sqlx::PgConnection;

use events::domain::Event;
use events::event_log::RecordedEvent;
use events::ids::UserId;
use events::read_model::Projection;

/// Applies `event` (decoded from `recorded`) to `projection`'s model in `schema`. Pushes
/// the users whose cached dashboard it makes stale onto `stale`.
pub async fn apply(
    conn: &mut PgConnection,
    projection: Projection,
    schema: &str,
    recorded: &RecordedEvent,
    event: &Event,
    stale: &mut Vec<UserId>,
) -> Result<(), sqlx::Error> {
    match projection {
        Projection::Users => match event {
            Event::User(e) => users::apply(conn, &format!("{schema}.users"), recorded, e).await,
            Event::Post(_) => Ok(()),
        },
        Projection::Authors => authors::apply(conn, schema, recorded, event).await,
        Projection::Posts => match event {
            Event::Post(e) => posts::apply(conn, schema, recorded, e).await,
            Event::User(_) => Ok(()),
        },
        Projection::Dashboard => dashboard::apply(conn, schema, recorded, event, stale).await,
    }
}
