//! The Blog's `authors` model: every user's public name and standing, kept from `user.*`
//! events (the Blog never asks Users), and how many published posts each has.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::Applied;
use domain::{Event, PostEvent, UserEvent};

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    active: bool,
    version: i64,
}

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    batch: &[Applied<'_>],
) -> Result<(), sqlx::Error> {
    let mut authors = Vec::new();
    let mut posts = Vec::new();
    for (_, event) in batch {
        match event {
            Event::User(e) => authors.push(e.user_id().0),
            Event::Post(PostEvent::Published(e)) => {
                authors.push(e.author_id.0);
                posts.push(e.id.0);
            }
            Event::Post(PostEvent::Deleted(e)) => {
                authors.push(e.author_id.0);
                posts.push(e.id.0);
            }
            Event::Post(_) | Event::Token(_) => {}
        }
    }
    if authors.is_empty() {
        return Ok(());
    }
    let mut rows: HashMap<Uuid, Row> = sqlx::query_as::<_, Row>(&format!(
        "SELECT id, name, active, version FROM {schema}.authors WHERE id = ANY($1)"
    ))
    .bind(&authors)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.id, row))
    .collect();
    // Which of the batch's posts count now (published, not deleted), and for whom.
    let mut published: HashMap<Uuid, Option<Uuid>> = HashMap::new();
    for (recorded, event) in batch {
        let version = recorded.version.0;
        match event {
            Event::User(UserEvent::Registered(e)) => {
                rows.insert(
                    e.id.0,
                    Row {
                        id: e.id.0,
                        name: e.name.clone(),
                        active: true,
                        version,
                    },
                );
            }
            Event::User(e) => {
                if let Some(row) = rows.get_mut(&e.user_id().0) {
                    row.version = version;
                    match e {
                        UserEvent::Updated(e) => row.name.clone_from(&e.name),
                        UserEvent::Deactivated(_) => row.active = false,
                        UserEvent::Registered(_)
                        | UserEvent::RoleChanged(_)
                        | UserEvent::TokensRevoked(_) => {}
                    }
                }
            }
            Event::Post(PostEvent::Published(e)) => {
                published.insert(e.id.0, Some(e.author_id.0));
            }
            Event::Post(PostEvent::Deleted(e)) => {
                published.insert(e.id.0, None);
            }
            Event::Post(_) | Event::Token(_) => {}
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.authors (id, name, active, version)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::bigint[])
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, active = excluded.active,
             version = excluded.version"
    ))
    .bind(super::column(&rows, |r| r.id))
    .bind(super::column(&rows, |r| r.name.as_str()))
    .bind(super::column(&rows, |r| r.active))
    .bind(super::column(&rows, |r| r.version))
    .execute(&mut *conn)
    .await?;
    if !posts.is_empty() {
        record_published(&mut *conn, schema, &published).await?;
    }
    // Counted from `published`, not incremented: a post can be published before its
    // author's registration is applied (different streams, no order between them), and
    // the count must come out the same either way.
    sqlx::query(&format!(
        "UPDATE {schema}.authors a
         SET post_count = (SELECT count(*) FROM {schema}.published p WHERE p.author_id = a.id)
         WHERE a.id = ANY($1)"
    ))
    .bind(&authors)
    .execute(conn)
    .await
    .map(drop)
}

/// Writes which of the batch's posts count now.
async fn record_published(
    conn: &mut PgConnection,
    schema: &str,
    published: &HashMap<Uuid, Option<Uuid>>,
) -> Result<(), sqlx::Error> {
    let removed: Vec<Uuid> = published
        .iter()
        .filter_map(|(post, author)| author.is_none().then_some(*post))
        .collect();
    sqlx::query(&format!(
        "DELETE FROM {schema}.published WHERE post_id = ANY($1)"
    ))
    .bind(removed)
    .execute(&mut *conn)
    .await?;
    let (kept, authors): (Vec<Uuid>, Vec<Uuid>) = published
        .iter()
        .filter_map(|(post, author)| author.map(|a| (*post, a)))
        .unzip();
    sqlx::query(&format!(
        "INSERT INTO {schema}.published (post_id, author_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING"
    ))
    .bind(kept)
    .bind(authors)
    .execute(conn)
    .await
    .map(drop)
}
