//! The `dashboard` model behind `GET /api/me/dashboard`: each user's profile, posts by
//! status with like counts, and the comments others left on them. Every change names the
//! users whose cached dashboard it makes stale.

use sqlx::PgConnection;

use events::domain::{Event, PostEvent, UserEvent};
use events::event_log::RecordedEvent;
use events::ids::{PostId, UserId};

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    recorded: &RecordedEvent,
    event: &Event,
    stale: &mut Vec<UserId>,
) -> Result<(), sqlx::Error> {
    let post = match event {
        Event::User(user_event) => {
            super::users::apply(&mut *conn, &format!("{schema}.users"), recorded, user_event)
                .await?;
            let id = match user_event {
                UserEvent::Registered(e) => e.id,
                UserEvent::Updated(e) => {
                    // A new name shows in the recent comments of others' dashboards too.
                    let readers: Vec<UserId> = sqlx::query_scalar(&format!(
                        "SELECT DISTINCT recipient FROM {schema}.comments WHERE author_id = $1"
                    ))
                    .bind(e.id)
                    .fetch_all(&mut *conn)
                    .await?;
                    stale.extend(readers);
                    e.id
                }
                UserEvent::RoleChanged(e) => e.id,
                UserEvent::Deactivated(e) => e.id,
            };
            stale.push(id);
            return Ok(());
        }
        Event::Post(post) => post,
    };
    let owner = match post {
        PostEvent::Updated(e) => {
            // The only post event that does not name the post's author.
            let author: Option<UserId> = sqlx::query_scalar(&format!(
                "UPDATE {schema}.posts SET title = $2 WHERE id = $1 RETURNING author_id"
            ))
            .bind(e.id)
            .bind(&e.title)
            .fetch_optional(&mut *conn)
            .await?;
            stale.extend(author);
            return Ok(());
        }
        PostEvent::Created(e) => {
            sqlx::query(&format!(
                "INSERT INTO {schema}.posts (id, author_id, title, status, position)
                 VALUES ($1, $2, $3, 'draft', $4)"
            ))
            .bind(e.id)
            .bind(e.author_id)
            .bind(&e.title)
            .bind(recorded.position.0)
            .execute(&mut *conn)
            .await?;
            e.author_id
        }
        PostEvent::Published(e) => {
            set_status(conn, schema, e.id, "published").await?;
            e.author_id
        }
        PostEvent::Deleted(e) => {
            set_status(conn, schema, e.id, "deleted").await?;
            e.author_id
        }
        // One's own comments are not news on one's own dashboard.
        PostEvent::CommentAdded(e) if e.author_id == e.post_author_id => return Ok(()),
        PostEvent::CommentAdded(e) => {
            sqlx::query(&format!(
                "INSERT INTO {schema}.comments
                     (id, recipient, post_id, author_id, body, created_at, position)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(e.comment_id)
            .bind(e.post_author_id)
            .bind(e.post_id)
            .bind(e.author_id)
            .bind(&e.body)
            .bind(recorded.recorded_at)
            .bind(recorded.position.0)
            .execute(&mut *conn)
            .await?;
            e.post_author_id
        }
        PostEvent::Liked(e) => {
            count_like(conn, schema, e.post_id, 1).await?;
            e.post_author_id
        }
        PostEvent::Unliked(e) => {
            count_like(conn, schema, e.post_id, -1).await?;
            e.post_author_id
        }
    };
    stale.push(owner);
    Ok(())
}

async fn set_status(
    conn: &mut PgConnection,
    schema: &str,
    post: PostId,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {schema}.posts SET status = $2 WHERE id = $1"
    ))
    .bind(post)
    .bind(status)
    .execute(conn)
    .await
    .map(drop)
}

async fn count_like(
    conn: &mut PgConnection,
    schema: &str,
    post: PostId,
    by: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {schema}.posts SET like_count = like_count + $2 WHERE id = $1"
    ))
    .bind(post)
    .bind(by)
    .execute(conn)
    .await
    .map(drop)
}
