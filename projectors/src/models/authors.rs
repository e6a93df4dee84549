//! The Blog's `authors` model: every user's public name and standing, kept from `user.*`
//! events (the Blog never asks Users), and how many published posts each has.

use std::collections::HashMap;

use sqlx::PgConnection;
use uuid::Uuid;

use super::Applied;
use events::domain::{Event, PostEvent, UserEvent};

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    active: bool,
    post_count: i32,
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
            Event::User(e) => authors.push(super::users::id(e)),
            Event::Post(PostEvent::Published(e)) => {
                authors.push(e.author_id.0);
                posts.push(e.id.0);
            }
            Event::Post(PostEvent::Deleted(e)) => {
                authors.push(e.author_id.0);
                posts.push(e.id.0);
            }
            Event::Post(_) => {}
        }
    }
    if authors.is_empty() {
        return Ok(());
    }
    let mut rows: HashMap<Uuid, Row> = sqlx::query_as::<_, Row>(&format!(
        "SELECT id, name, active, post_count, version FROM {schema}.authors WHERE id = ANY($1)"
    ))
    .bind(&authors)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.id, row))
    .collect();
    // Which of the batch's posts count (published, not deleted), and for whom.
    let mut published: HashMap<Uuid, Option<Uuid>> = posts.iter().map(|p| (*p, None)).collect();
    let counted: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
        "SELECT post_id, author_id FROM {schema}.published WHERE post_id = ANY($1)"
    ))
    .bind(&posts)
    .fetch_all(&mut *conn)
    .await?;
    published.extend(
        counted
            .into_iter()
            .map(|(post, author)| (post, Some(author))),
    );
    for (recorded, event) in batch {
        let version = recorded.version.0;
        let (author, change) = match event {
            Event::User(UserEvent::Registered(e)) => {
                rows.insert(
                    e.id.0,
                    Row {
                        id: e.id.0,
                        name: e.name.clone(),
                        active: true,
                        post_count: 0,
                        version,
                    },
                );
                continue;
            }
            Event::User(e) => (super::users::id(e), 0),
            Event::Post(PostEvent::Published(e)) => {
                match published.insert(e.id.0, Some(e.author_id.0)) {
                    Some(Some(_)) => continue,
                    _ => (e.author_id.0, 1),
                }
            }
            Event::Post(PostEvent::Deleted(e)) => match published.insert(e.id.0, None) {
                Some(Some(author)) => (author, -1),
                _ => continue,
            },
            Event::Post(_) => continue,
        };
        let Some(row) = rows.get_mut(&author) else {
            continue;
        };
        row.post_count += change;
        match event {
            Event::User(UserEvent::Updated(e)) => row.name.clone_from(&e.name),
            Event::User(UserEvent::Deactivated(_)) => row.active = false,
            _ => {}
        }
        if let Event::User(_) = event {
            row.version = version;
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.authors (id, name, active, post_count, version)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::int[], $5::bigint[])
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, active = excluded.active,
             post_count = excluded.post_count, version = excluded.version"
    ))
    .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.active).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.post_count).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    if posts.is_empty() {
        return Ok(());
    }
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
