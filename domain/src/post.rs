//! The Post aggregate: drafts, publishing, deletion, comments and likes.
//!
//! A post that is not published (a draft, or deleted) exists only for its author:
//! everyone else, admins included, gets "not found". Its author commenting on or
//! liking it gets a conflict.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Actor, DomainError};
use crate::ids::{CommentId, PostId, UserId};
use crate::values::{CommentBody, PostBody, Title};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PostEvent {
    #[serde(rename = "post.created")]
    Created(PostCreated),
    #[serde(rename = "post.updated")]
    Updated(PostUpdated),
    #[serde(rename = "post.published")]
    Published(PostPublished),
    #[serde(rename = "post.deleted")]
    Deleted(PostDeleted),
    #[serde(rename = "comment.added")]
    CommentAdded(CommentAdded),
    #[serde(rename = "post.liked")]
    Liked(PostLiked),
    #[serde(rename = "post.unliked")]
    Unliked(PostUnliked),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostCreated {
    pub id: PostId,
    pub author_id: UserId,
    pub title: String,
    pub body: String,
}

/// The full title and body after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostUpdated {
    pub id: PostId,
    pub title: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostPublished {
    pub id: PostId,
    pub author_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostDeleted {
    pub id: PostId,
    pub author_id: UserId,
    /// Who deleted it: the author or an admin.
    pub by: UserId,
}

/// `post_author_id` lets consumers (e.g. the notification relay) route without a lookup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommentAdded {
    pub post_id: PostId,
    pub comment_id: CommentId,
    pub author_id: UserId,
    pub post_author_id: UserId,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostLiked {
    pub post_id: PostId,
    pub user_id: UserId,
    pub post_author_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostUnliked {
    pub post_id: PostId,
    pub user_id: UserId,
    pub post_author_id: UserId,
}

impl PostEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            PostEvent::Created(_) => "post.created",
            PostEvent::Updated(_) => "post.updated",
            PostEvent::Published(_) => "post.published",
            PostEvent::Deleted(_) => "post.deleted",
            PostEvent::CommentAdded(_) => "comment.added",
            PostEvent::Liked(_) => "post.liked",
            PostEvent::Unliked(_) => "post.unliked",
        }
    }

    /// The post the event is about.
    pub fn post_id(&self) -> PostId {
        match self {
            PostEvent::Created(e) => e.id,
            PostEvent::Updated(e) => e.id,
            PostEvent::Published(e) => e.id,
            PostEvent::Deleted(e) => e.id,
            PostEvent::CommentAdded(e) => e.post_id,
            PostEvent::Liked(e) => e.post_id,
            PostEvent::Unliked(e) => e.post_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PostCommand {
    Create {
        title: Title,
        body: PostBody,
    },
    Update {
        title: Option<Title>,
        body: Option<PostBody>,
    },
    Publish,
    Delete,
    AddComment {
        comment_id: CommentId,
        body: CommentBody,
    },
    Like,
    Unlike,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PostStatus {
    Draft,
    Published,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub id: PostId,
    pub author_id: UserId,
    pub title: String,
    pub body: String,
    pub status: PostStatus,
    pub likers: BTreeSet<UserId>,
    pub comment_count: u64,
}

pub fn decide(
    state: Option<&Post>,
    actor: &Actor,
    id: PostId,
    command: &PostCommand,
) -> Result<Vec<PostEvent>, DomainError> {
    actor.ensure_not_deactivated()?;
    if let (PostCommand::Create { title, body }, None) = (command, state) {
        actor.ensure_active()?;
        return Ok(vec![PostEvent::Created(PostCreated {
            id,
            author_id: actor.id,
            title: title.as_str().to_owned(),
            body: body.as_str().to_owned(),
        })]);
    }
    let post = match state {
        Some(post) if post.status == PostStatus::Published || post.author_id == actor.id => post,
        _ => return Err(DomainError::NotFound("no such post")),
    };
    let is_author = post.author_id == actor.id;
    match command {
        PostCommand::Create { .. } => Err(DomainError::Conflict("post already exists")),
        PostCommand::Update { title, body } => {
            if !is_author {
                return Err(DomainError::Forbidden("only the author may edit a post"));
            }
            ensure_not_deleted(post)?;
            let title = title.as_ref().map_or(post.title.as_str(), Title::as_str);
            let body = body.as_ref().map_or(post.body.as_str(), PostBody::as_str);
            if title == post.title && body == post.body {
                return Ok(vec![]);
            }
            Ok(vec![PostEvent::Updated(PostUpdated {
                id,
                title: title.to_owned(),
                body: body.to_owned(),
            })])
        }
        PostCommand::Publish => {
            if !is_author {
                return Err(DomainError::Forbidden("only the author may publish a post"));
            }
            ensure_not_deleted(post)?;
            if post.status == PostStatus::Published {
                return Err(DomainError::Conflict("post is already published"));
            }
            Ok(vec![PostEvent::Published(PostPublished {
                id,
                author_id: post.author_id,
            })])
        }
        PostCommand::Delete => {
            if !is_author && !actor.admin {
                return Err(DomainError::Forbidden(
                    "only the author or an admin may delete a post",
                ));
            }
            if post.status == PostStatus::Deleted {
                return Ok(vec![]);
            }
            Ok(vec![PostEvent::Deleted(PostDeleted {
                id,
                author_id: post.author_id,
                by: actor.id,
            })])
        }
        PostCommand::AddComment { comment_id, body } => {
            actor.ensure_active()?;
            ensure_published(post)?;
            Ok(vec![PostEvent::CommentAdded(CommentAdded {
                post_id: id,
                comment_id: *comment_id,
                author_id: actor.id,
                post_author_id: post.author_id,
                body: body.as_str().to_owned(),
            })])
        }
        PostCommand::Like => {
            actor.ensure_active()?;
            ensure_published(post)?;
            if post.likers.contains(&actor.id) {
                return Ok(vec![]);
            }
            Ok(vec![PostEvent::Liked(PostLiked {
                post_id: id,
                user_id: actor.id,
                post_author_id: post.author_id,
            })])
        }
        PostCommand::Unlike => {
            actor.ensure_active()?;
            ensure_published(post)?;
            if !post.likers.contains(&actor.id) {
                return Ok(vec![]);
            }
            Ok(vec![PostEvent::Unliked(PostUnliked {
                post_id: id,
                user_id: actor.id,
                post_author_id: post.author_id,
            })])
        }
    }
}

fn ensure_not_deleted(post: &Post) -> Result<(), DomainError> {
    if post.status == PostStatus::Deleted {
        return Err(DomainError::Conflict("post is deleted"));
    }
    Ok(())
}

fn ensure_published(post: &Post) -> Result<(), DomainError> {
    if post.status != PostStatus::Published {
        return Err(DomainError::Conflict("post is not published"));
    }
    Ok(())
}

pub fn apply(state: &mut Option<Post>, event: &PostEvent) {
    if let PostEvent::Created(e) = event {
        *state = Some(Post {
            id: e.id,
            author_id: e.author_id,
            title: e.title.clone(),
            body: e.body.clone(),
            status: PostStatus::Draft,
            likers: BTreeSet::new(),
            comment_count: 0,
        });
        return;
    }
    let Some(post) = state else { return };
    match event {
        PostEvent::Created(_) => {}
        PostEvent::Updated(e) => {
            post.title.clone_from(&e.title);
            post.body.clone_from(&e.body);
        }
        PostEvent::Published(_) => post.status = PostStatus::Published,
        PostEvent::Deleted(_) => post.status = PostStatus::Deleted,
        PostEvent::CommentAdded(_) => post.comment_count += 1,
        PostEvent::Liked(e) => {
            post.likers.insert(e.user_id);
        }
        PostEvent::Unliked(e) => {
            post.likers.remove(&e.user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Standing;

    fn post_id() -> PostId {
        PostId(uuid::Uuid::from_u128(10))
    }

    fn author() -> Actor {
        Actor {
            id: UserId(uuid::Uuid::from_u128(1)),
            admin: false,
            standing: Standing::Active,
        }
    }

    fn reader() -> Actor {
        Actor {
            id: UserId(uuid::Uuid::from_u128(2)),
            admin: false,
            standing: Standing::Active,
        }
    }

    fn admin() -> Actor {
        Actor {
            id: UserId(uuid::Uuid::from_u128(3)),
            admin: true,
            standing: Standing::Active,
        }
    }

    fn created() -> PostEvent {
        PostEvent::Created(PostCreated {
            id: post_id(),
            author_id: author().id,
            title: "Hello".into(),
            body: "World".into(),
        })
    }

    fn published() -> PostEvent {
        PostEvent::Published(PostPublished {
            id: post_id(),
            author_id: author().id,
        })
    }

    fn given(events: &[PostEvent]) -> Option<Post> {
        let mut state = None;
        for e in events {
            apply(&mut state, e);
        }
        state
    }

    fn when(
        events: &[PostEvent],
        actor: Actor,
        command: PostCommand,
    ) -> Result<Vec<PostEvent>, DomainError> {
        decide(given(events).as_ref(), &actor, post_id(), &command)
    }

    fn comment() -> PostCommand {
        PostCommand::AddComment {
            comment_id: CommentId(uuid::Uuid::from_u128(20)),
            body: CommentBody::parse("Nice").unwrap(),
        }
    }

    #[test]
    fn an_active_user_creates_a_draft() {
        let create = PostCommand::Create {
            title: Title::parse(" Hello ").unwrap(),
            body: PostBody::parse("World").unwrap(),
        };
        assert_eq!(when(&[], author(), create.clone()), Ok(vec![created()]));
        let unregistered = Actor {
            standing: Standing::Unregistered,
            ..author()
        };
        assert!(matches!(
            when(&[], unregistered, create),
            Err(DomainError::Forbidden(_))
        ));
    }

    #[test]
    fn a_draft_does_not_exist_for_anyone_but_its_author() {
        for actor in [reader(), admin()] {
            for command in [PostCommand::Publish, PostCommand::Like, comment()] {
                let result = when(&[created()], actor, command);
                assert!(matches!(result, Err(DomainError::NotFound(_))));
            }
        }
    }

    #[test]
    fn the_author_commenting_on_a_draft_is_a_conflict() {
        for command in [PostCommand::Like, comment()] {
            let result = when(&[created()], author(), command);
            assert!(matches!(result, Err(DomainError::Conflict(_))));
        }
    }

    #[test]
    fn publishing_twice_is_a_conflict() {
        assert_eq!(
            when(&[created()], author(), PostCommand::Publish),
            Ok(vec![published()])
        );
        let again = when(&[created(), published()], author(), PostCommand::Publish);
        assert!(matches!(again, Err(DomainError::Conflict(_))));
    }

    #[test]
    fn only_the_author_edits_and_publishes() {
        let edit = PostCommand::Update {
            title: Some(Title::parse("New").unwrap()),
            body: None,
        };
        let result = when(&[created(), published()], reader(), edit.clone());
        assert!(matches!(result, Err(DomainError::Forbidden(_))));
        assert_eq!(
            when(&[created()], author(), edit),
            Ok(vec![PostEvent::Updated(PostUpdated {
                id: post_id(),
                title: "New".into(),
                body: "World".into(),
            })])
        );
    }

    #[test]
    fn an_admin_deletes_a_published_post_and_deleting_twice_appends_once() {
        let deleted = PostEvent::Deleted(PostDeleted {
            id: post_id(),
            author_id: author().id,
            by: admin().id,
        });
        assert_eq!(
            when(&[created(), published()], admin(), PostCommand::Delete),
            Ok(vec![deleted.clone()])
        );
        let by_reader = when(&[created(), published()], reader(), PostCommand::Delete);
        assert!(matches!(by_reader, Err(DomainError::Forbidden(_))));
        assert_eq!(
            when(
                &[created(), published(), deleted],
                author(),
                PostCommand::Delete
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn a_deleted_post_is_gone_for_everyone_else() {
        let deleted = PostEvent::Deleted(PostDeleted {
            id: post_id(),
            author_id: author().id,
            by: author().id,
        });
        let history = [created(), published(), deleted];
        assert!(matches!(
            when(&history, reader(), comment()),
            Err(DomainError::NotFound(_))
        ));
        assert!(matches!(
            when(&history, author(), PostCommand::Publish),
            Err(DomainError::Conflict(_))
        ));
    }

    #[test]
    fn liking_twice_appends_once_and_unliking_needs_a_like() {
        let liked = PostEvent::Liked(PostLiked {
            post_id: post_id(),
            user_id: reader().id,
            post_author_id: author().id,
        });
        assert_eq!(
            when(&[created(), published()], reader(), PostCommand::Like),
            Ok(vec![liked.clone()])
        );
        let history = [created(), published(), liked];
        assert_eq!(when(&history, reader(), PostCommand::Like), Ok(vec![]));
        assert_eq!(
            when(&[created(), published()], reader(), PostCommand::Unlike),
            Ok(vec![])
        );
        assert_eq!(given(&history).unwrap().likers.len(), 1);
    }

    #[test]
    fn a_comment_names_the_posts_author() {
        let result = when(&[created(), published()], reader(), comment());
        assert_eq!(
            result,
            Ok(vec![PostEvent::CommentAdded(CommentAdded {
                post_id: post_id(),
                comment_id: CommentId(uuid::Uuid::from_u128(20)),
                author_id: reader().id,
                post_author_id: author().id,
                body: "Nice".into(),
            })])
        );
    }

    #[test]
    fn unregistered_and_deactivated_users_cannot_comment() {
        for standing in [Standing::Unregistered, Standing::Deactivated] {
            let actor = Actor {
                standing,
                ..reader()
            };
            let result = when(&[created(), published()], actor, comment());
            assert!(matches!(result, Err(DomainError::Forbidden(_))));
        }
    }
}
