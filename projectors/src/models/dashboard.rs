//! The `dashboard` model behind `GET /api/me/dashboard`: each user's profile, posts by
//! status with like counts, and the comments others left on them. Every change names the
//! users whose cached dashboard it makes stale.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::Applied;
use domain::ids::UserId;
use domain::recorded::RecordedEvent;
use domain::{PostEvent, UserEvent};

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    author_id: Uuid,
    title: String,
    status: String,
    like_count: i32,
    position: i64,
}

struct Comment {
    id: Uuid,
    recipient: Uuid,
    post_id: Uuid,
    author_id: Uuid,
    body: String,
    created_at: DateTime<Utc>,
    position: i64,
}

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    batch: &[Applied<'_>],
    stale: &mut Vec<UserId>,
) -> Result<(), sqlx::Error> {
    let users = super::user_events(batch);
    super::users::apply(&mut *conn, &format!("{schema}.users"), &users).await?;
    stale.extend(users.iter().map(|(_, e)| e.user_id()));
    let renamed: Vec<Uuid> = users
        .iter()
        .filter_map(|(_, e)| match e {
            UserEvent::Updated(e) => Some(e.id.0),
            _ => None,
        })
        .collect();
    let comments = apply_posts(conn, schema, &super::post_events(batch), stale).await?;
    if !comments.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO {schema}.comments
                 (id, recipient, post_id, author_id, body, created_at, position)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                 $6::timestamptz[], $7::bigint[])"
        ))
        .bind(super::column(&comments, |c| c.id))
        .bind(super::column(&comments, |c| c.recipient))
        .bind(super::column(&comments, |c| c.post_id))
        .bind(super::column(&comments, |c| c.author_id))
        .bind(super::column(&comments, |c| c.body.as_str()))
        .bind(super::column(&comments, |c| c.created_at))
        .bind(super::column(&comments, |c| c.position))
        .execute(&mut *conn)
        .await?;
    }
    if !renamed.is_empty() {
        // A new name shows in the recent comments of others' dashboards too.
        let readers: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT recipient FROM {schema}.comments WHERE author_id = ANY($1)"
        ))
        .bind(renamed)
        .fetch_all(conn)
        .await?;
        stale.extend(readers.into_iter().map(UserId));
    }
    Ok(())
}

/// Folds the post events into the posts table; returns the comments to add.
async fn apply_posts(
    conn: &mut PgConnection,
    schema: &str,
    events: &[(&RecordedEvent, &PostEvent)],
    stale: &mut Vec<UserId>,
) -> Result<Vec<Comment>, sqlx::Error> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = events.iter().map(|(_, e)| e.post_id().0).collect();
    let mut rows: HashMap<Uuid, Row> = sqlx::query_as::<_, Row>(&format!(
        "SELECT id, author_id, title, status, like_count, position
         FROM {schema}.posts WHERE id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.id, row))
    .collect();
    let mut comments = Vec::new();
    for (recorded, event) in events {
        match event {
            PostEvent::Created(e) => {
                rows.insert(
                    e.id.0,
                    Row {
                        id: e.id.0,
                        author_id: e.author_id.0,
                        title: e.title.clone(),
                        status: "draft".to_owned(),
                        like_count: 0,
                        position: recorded.position.0,
                    },
                );
                stale.push(e.author_id);
            }
            PostEvent::Updated(e) => {
                if let Some(row) = rows.get_mut(&e.id.0) {
                    row.title.clone_from(&e.title);
                    stale.push(UserId(row.author_id));
                }
            }
            PostEvent::Published(e) => {
                set(&mut rows, e.id.0, |row| row.status = "published".to_owned());
                stale.push(e.author_id);
            }
            PostEvent::Deleted(e) => {
                set(&mut rows, e.id.0, |row| row.status = "deleted".to_owned());
                stale.push(e.author_id);
            }
            // One's own comments are not news on one's own dashboard.
            PostEvent::CommentAdded(e) if e.author_id == e.post_author_id => {}
            PostEvent::CommentAdded(e) => {
                comments.push(Comment {
                    id: e.comment_id.0,
                    recipient: e.post_author_id.0,
                    post_id: e.post_id.0,
                    author_id: e.author_id.0,
                    body: e.body.clone(),
                    created_at: recorded.recorded_at,
                    position: recorded.position.0,
                });
                stale.push(e.post_author_id);
            }
            PostEvent::Liked(e) => {
                set(&mut rows, e.post_id.0, |row| row.like_count += 1);
                stale.push(e.post_author_id);
            }
            PostEvent::Unliked(e) => {
                set(&mut rows, e.post_id.0, |row| row.like_count -= 1);
                stale.push(e.post_author_id);
            }
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.posts (id, author_id, title, status, like_count, position)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int[],
             $6::bigint[])
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, status = excluded.status,
             like_count = excluded.like_count"
    ))
    .bind(super::column(&rows, |r| r.id))
    .bind(super::column(&rows, |r| r.author_id))
    .bind(super::column(&rows, |r| r.title.as_str()))
    .bind(super::column(&rows, |r| r.status.as_str()))
    .bind(super::column(&rows, |r| r.like_count))
    .bind(super::column(&rows, |r| r.position))
    .execute(conn)
    .await?;
    Ok(comments)
}

fn set(rows: &mut HashMap<Uuid, Row>, post: Uuid, change: impl FnOnce(&mut Row)) {
    if let Some(row) = rows.get_mut(&post) {
        change(row);
    }
}
