//! The `users` model (and the dashboard's copy of it): one row per user, its profile,
//! roles, standing and stream version.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use domain::recorded::RecordedEvent;
use domain::{Role, UserEvent};

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    email: String,
    name: String,
    roles: Vec<String>,
    active: bool,
    version: i64,
}

/// Applies user events, in order, to a users table (`<schema>.users`).
pub async fn apply(
    conn: &mut PgConnection,
    table: &str,
    events: &[(&RecordedEvent, &UserEvent)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|(_, e)| e.user_id().0).collect();
    let mut rows: HashMap<Uuid, Row> = sqlx::query_as::<_, Row>(&format!(
        "SELECT id, email, name, roles, active, version FROM {table} WHERE id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.id, row))
    .collect();
    for (recorded, event) in events {
        let version = recorded.version.0;
        if let UserEvent::Registered(e) = event {
            rows.insert(
                e.id.0,
                Row {
                    id: e.id.0,
                    email: e.email.clone(),
                    name: e.name.clone(),
                    roles: names(&e.roles),
                    active: true,
                    version,
                },
            );
            continue;
        }
        let Some(row) = rows.get_mut(&event.user_id().0) else {
            continue;
        };
        row.version = version;
        match event {
            UserEvent::Registered(_) => {}
            UserEvent::Updated(e) => {
                row.email.clone_from(&e.email);
                row.name.clone_from(&e.name);
            }
            UserEvent::RoleChanged(e) => row.roles = names(&e.roles),
            UserEvent::Deactivated(_) => row.active = false,
            UserEvent::TokensRevoked(_) => {}
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    sqlx::query(&format!(
        "INSERT INTO {table} (id, email, name, roles, active, version)
         SELECT id, email, name, string_to_array(roles, ','), active, version
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::bigint[])
              AS t(id, email, name, roles, active, version)
         ON CONFLICT (id) DO UPDATE SET email = excluded.email, name = excluded.name,
             roles = excluded.roles, active = excluded.active, version = excluded.version"
    ))
    .bind(super::column(&rows, |r| r.id))
    .bind(super::column(&rows, |r| r.email.as_str()))
    .bind(super::column(&rows, |r| r.name.as_str()))
    .bind(super::column(&rows, |r| r.roles.join(",")))
    .bind(super::column(&rows, |r| r.active))
    .bind(super::column(&rows, |r| r.version))
    .execute(conn)
    .await
    .map(drop)
}

fn names(roles: &[Role]) -> Vec<String> {
    Role::names(roles).into_iter().map(str::to_owned).collect()
}
