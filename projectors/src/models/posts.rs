//! The Blog's `posts` model: drafts and published posts with their comments and like
//! counts. Author names are not copied here: readers join the `authors` model, so a
//! rename shows on every post and comment at once.

use sqlx::PgConnection;

use events::domain::PostEvent;
use events::event_log::RecordedEvent;

pub async fn apply(
    conn: &mut PgConnection,
    schema: &str,
    recorded: &RecordedEvent,
    event: &PostEvent,
) -> Result<(), sqlx::Error> {
    let version = recorded.version.0;
    let at = recorded.recorded_at;
    match event {
        PostEvent::Created(e) => sqlx::query(&format!(
            "INSERT INTO {schema}.posts (id, author_id, title, body, status, created_at, version)
             VALUES ($1, $2, $3, $4, 'draft', $5, $6)"
        ))
        .bind(e.id)
        .bind(e.author_id)
        .bind(&e.title)
        .bind(&e.body)
        .bind(at)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        PostEvent::Updated(e) => sqlx::query(&format!(
            "UPDATE {schema}.posts SET title = $2, body = $3, version = $4 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(&e.title)
        .bind(&e.body)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        PostEvent::Published(e) => sqlx::query(&format!(
            "UPDATE {schema}.posts SET status = 'published', published_at = $2, version = $3
             WHERE id = $1"
        ))
        .bind(e.id)
        .bind(at)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        PostEvent::Deleted(e) => sqlx::query(&format!(
            "UPDATE {schema}.posts SET status = 'deleted', version = $2 WHERE id = $1"
        ))
        .bind(e.id)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        PostEvent::CommentAdded(e) => sqlx::query(&format!(
            "WITH added AS (
                 INSERT INTO {schema}.comments (id, post_id, author_id, body, created_at, position)
                 VALUES ($2, $1, $3, $4, $5, $6)
             )
             UPDATE {schema}.posts SET comment_count = comment_count + 1, version = $7
             WHERE id = $1"
        ))
        .bind(e.post_id)
        .bind(e.comment_id)
        .bind(e.author_id)
        .bind(&e.body)
        .bind(at)
        .bind(recorded.position.0)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        PostEvent::Liked(e) => sqlx::query(&format!(
            "UPDATE {schema}.posts SET like_count = like_count + 1, version = $2 WHERE id = $1"
        ))
        .bind(e.post_id)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
        PostEvent::Unliked(e) => sqlx::query(&format!(
            "UPDATE {schema}.posts SET like_count = like_count - 1, version = $2 WHERE id = $1"
        ))
        .bind(e.post_id)
        .bind(version)
        .execute(&mut *conn)
        .await
        .map(drop),
    }
}
