//! The Blog's `authors` model: every user's public name and standing, kept from `user.*`
//! events (the Blog never asks Users), and how many published posts each has.

use sqlx::PgConnection;

use events::domain::{Event, PostEvent, UserEvent};
use events::event_log::RecordedEvent;

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    recorded: &RecordedEvent,
    event: &Event,
) -> Result<(), sqlx::Error> {
    let version = recorded.version.0;
    match event {
        Event::User(UserEvent::Registered(e)) => sqlx::query(&format!(
            "INSERT INTO {schema}.authors (id, name, active, version) VALUES ($1, $2, true, $3)"
        ))
        .bind(e.id)
        .bind(&e.name)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        Event::User(UserEvent::Updated(e)) => sqlx::query(&format!(
            "UPDATE {schema}.authors SET name = $2, version = $3 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(&e.name)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        Event::User(UserEvent::RoleChanged(e)) => sqlx::query(&format!(
            "UPDATE {schema}.authors SET version = $2 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        Event::User(UserEvent::Deactivated(e)) => sqlx::query(&format!(
            "UPDATE {schema}.authors SET active = false, version = $2 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        Event::Post(PostEvent::Published(e)) => sqlx::query(&format!(
            "WITH counted AS (
                 INSERT INTO {schema}.published (post_id, author_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING RETURNING author_id
             )
             UPDATE {schema}.authors SET post_count = post_count + 1
             WHERE id IN (SELECT author_id FROM counted)"
        ))
        .bind(e.id)
        .bind(e.author_id)
        .execute(&mut *conn)
        .await
        .map(drop),
        Event::Post(PostEvent::Deleted(e)) => sqlx::query(&format!(
            "WITH uncounted AS (
                 DELETE FROM {schema}.published WHERE post_id = $1 RETURNING author_id
             )
             UPDATE {schema}.authors SET post_count = post_count - 1
             WHERE id IN (SELECT author_id FROM uncounted)"
        ))
        .bind(e.id)
        .execute(&mut *conn)
        .await
        .map(drop),
        Event::Post(_) => Ok(()),
    }
}
