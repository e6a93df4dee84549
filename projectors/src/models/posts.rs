//! The Blog's `posts` model: drafts and published posts with their comments and like
//! counts. Author names are not copied here: readers join the `authors` model, so a
//! rename shows on every post and comment at once.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use domain::PostEvent;
use domain::recorded::RecordedEvent;

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    author_id: Uuid,
    title: String,
    body: String,
    status: String,
    created_at: DateTime<Utc>,
    published_at: Option<DateTime<Utc>>,
    comment_count: i32,
    like_count: i32,
    version: i64,
}

struct Comment {
    id: Uuid,
    post_id: Uuid,
    author_id: Uuid,
    body: String,
    created_at: DateTime<Utc>,
    position: i64,
}

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    events: &[(&RecordedEvent, &PostEvent)],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|(_, e)| e.post_id().0).collect();
    let mut rows: HashMap<Uuid, Row> = sqlx::query_as::<_, Row>(&format!(
        "SELECT id, author_id, title, body, status, created_at, published_at, comment_count,
                like_count, version
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
        let (version, at) = (recorded.version.0, recorded.recorded_at);
        match event {
            PostEvent::Created(e) => {
                rows.insert(
                    e.id.0,
                    Row {
                        id: e.id.0,
                        author_id: e.author_id.0,
                        title: e.title.clone(),
                        body: e.body.clone(),
                        status: "draft".to_owned(),
                        created_at: at,
                        published_at: None,
                        comment_count: 0,
                        like_count: 0,
                        version,
                    },
                );
                continue;
            }
            PostEvent::CommentAdded(e) => comments.push(Comment {
                id: e.comment_id.0,
                post_id: e.post_id.0,
                author_id: e.author_id.0,
                body: e.body.clone(),
                created_at: at,
                position: recorded.position.0,
            }),
            _ => {}
        }
        let Some(row) = rows.get_mut(&event.post_id().0) else {
            continue;
        };
        row.version = version;
        match event {
            PostEvent::Created(_) => {}
            PostEvent::Updated(e) => {
                row.title.clone_from(&e.title);
                row.body.clone_from(&e.body);
            }
            PostEvent::Published(_) => {
                row.status = "published".to_owned();
                row.published_at = Some(at);
            }
            PostEvent::Deleted(_) => row.status = "deleted".to_owned(),
            PostEvent::CommentAdded(_) => row.comment_count += 1,
            PostEvent::Liked(_) => row.like_count += 1,
            PostEvent::Unliked(_) => row.like_count -= 1,
        }
    }
    let rows: Vec<Row> = rows.into_values().collect();
    sqlx::query(&format!(
        "INSERT INTO {schema}.posts (id, author_id, title, body, status, created_at,
             published_at, comment_count, like_count, version)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
             $6::timestamptz[], $7::timestamptz[], $8::int[], $9::int[], $10::bigint[])
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body,
             status = excluded.status, published_at = excluded.published_at,
             comment_count = excluded.comment_count, like_count = excluded.like_count,
             version = excluded.version"
    ))
    .bind(super::column(&rows, |r| r.id))
    .bind(super::column(&rows, |r| r.author_id))
    .bind(super::column(&rows, |r| r.title.as_str()))
    .bind(super::column(&rows, |r| r.body.as_str()))
    .bind(super::column(&rows, |r| r.status.as_str()))
    .bind(super::column(&rows, |r| r.created_at))
    .bind(super::column(&rows, |r| r.published_at))
    .bind(super::column(&rows, |r| r.comment_count))
    .bind(super::column(&rows, |r| r.like_count))
    .bind(super::column(&rows, |r| r.version))
    .execute(&mut *conn)
    .await?;
    if comments.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "INSERT INTO {schema}.comments (id, post_id, author_id, body, created_at, position)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[],
             $5::timestamptz[], $6::bigint[])"
    ))
    .bind(super::column(&comments, |c| c.id))
    .bind(super::column(&comments, |c| c.post_id))
    .bind(super::column(&comments, |c| c.author_id))
    .bind(super::column(&comments, |c| c.body.as_str()))
    .bind(super::column(&comments, |c| c.created_at))
    .bind(super::column(&comments, |c| c.position))
    .execute(conn)
    .await
    .map(drop)
}
