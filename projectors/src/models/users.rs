//! The `users` model (and the dashboard's copy of it): one row per user, its profile,
//! roles, standing and stream version.

use sqlx::PgConnection;

use events::domain::{Role, UserEvent};
use events::event_log::RecordedEvent;

/// Applies a user event to a users table (`<schema>.users`).
pub async fn apply(
    conn: &mut PgConnection,
    table: &str,
    recorded: &RecordedEvent,
    event: &UserEvent,
) -> Result<(), sqlx::Error> {
    let version = recorded.version.0;
    match event {
        UserEvent::Registered(e) => sqlx::query(&format!(
            "INSERT INTO {table} (id, email, name, roles, active, version)
             VALUES ($1, $2, $3, $4, true, $5)"
        ))
        .bind(e.id)
        .bind(&e.email)
        .bind(&e.name)
        .bind(Role::names(&e.roles))
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        UserEvent::Updated(e) => sqlx::query(&format!(
            "UPDATE {table} SET email = $2, name = $3, version = $4 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(&e.email)
        .bind(&e.name)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        UserEvent::RoleChanged(e) => sqlx::query(&format!(
            "UPDATE {table} SET roles = $2, version = $3 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(Role::names(&e.roles))
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        UserEvent::Deactivated(e) => sqlx::query(&format!(
            "UPDATE {table} SET active = false, version = $2 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
    }
}
