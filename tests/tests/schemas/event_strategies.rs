//! proptest strategies for every `Event` variant and the `RecordedEvent` it is stored as.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use domain::ids::{CommentId, EventId, Position, PostId, StreamId, TokenId, UserId, Version};
use domain::post::{
    CommentAdded, PostCreated, PostDeleted, PostLiked, PostPublished, PostUnliked, PostUpdated,
};
use domain::recorded::{Metadata, RecordedEvent};
use domain::token::TokenRevoked;
use domain::user::{
    UserDeactivated, UserRegistered, UserRoleChanged, UserTokensRevoked, UserUpdated,
};
use domain::{
    CommentBody, Email, Event, Jti, Name, PostBody, PostEvent, Role, Title, TokenEvent, UserEvent,
};
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union, ValueTree};
use proptest::test_runner::TestRunner;

/// How many variants `Event` has. `variant_index` does not compile when one is added:
/// give it the next index, raise this, and add its strategy to `variant_strategies`.
const VARIANTS: usize = 13;

fn variant_index(event: &Event) -> usize {
    match event {
        Event::User(UserEvent::Registered(_)) => 0,
        Event::User(UserEvent::Updated(_)) => 1,
        Event::User(UserEvent::RoleChanged(_)) => 2,
        Event::User(UserEvent::Deactivated(_)) => 3,
        Event::Post(PostEvent::Created(_)) => 4,
        Event::Post(PostEvent::Updated(_)) => 5,
        Event::Post(PostEvent::Published(_)) => 6,
        Event::Post(PostEvent::Deleted(_)) => 7,
        Event::Post(PostEvent::CommentAdded(_)) => 8,
        Event::Post(PostEvent::Liked(_)) => 9,
        Event::Post(PostEvent::Unliked(_)) => 10,
        Event::User(UserEvent::TokensRevoked(_)) => 11,
        Event::Token(TokenEvent::Revoked(_)) => 12,
    }
}

fn regex(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    proptest::string::string_regex(pattern).unwrap()
}

fn uuid() -> impl Strategy<Value = uuid::Uuid> {
    any::<u128>().prop_map(uuid::Uuid::from_u128)
}

fn user_id() -> impl Strategy<Value = UserId> {
    uuid().prop_map(UserId)
}

fn post_id() -> impl Strategy<Value = PostId> {
    uuid().prop_map(PostId)
}

fn comment_id() -> impl Strategy<Value = CommentId> {
    uuid().prop_map(CommentId)
}

/// Text as a client might send it: any character of `class`, short, of any length up
/// to the limit, or right at the limit (a few over included). The callers keep only
/// what the domain's parser accepts, so the values are exactly those an event can
/// carry, the longest ones included.
fn text(prefix: &str, class: &str, max: usize, suffix: &str) -> impl Strategy<Value = String> {
    let lengths = [(1, 8), (1, max), (max - 4, max + 2)];
    let strategies: Vec<_> = lengths
        .iter()
        .map(|(min, max)| regex(&format!("{prefix}{class}{{{min},{max}}}{suffix}")))
        .collect();
    Union::new(strategies)
}

/// No control characters; surrounding blanks (trimmed by the parser).
fn single_line(max: usize) -> impl Strategy<Value = String> {
    text("[ \\t]{0,2}", "[^\\p{Cc}]", max, "[ ]{0,2}")
}

/// No control characters other than tab, line feed and carriage return.
fn multi_line(max: usize) -> impl Strategy<Value = String> {
    text(
        "",
        "[^\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F-\\x9F]",
        max,
        "",
    )
}

fn name() -> impl Strategy<Value = String> {
    single_line(Name::MAX_CHARS).prop_filter_map("not a valid name", |s| {
        Name::parse(&s).ok().map(Name::into_inner)
    })
}

fn title() -> impl Strategy<Value = String> {
    single_line(Title::MAX_CHARS).prop_filter_map("not a valid title", |s| {
        Title::parse(&s).ok().map(Title::into_inner)
    })
}

fn post_body() -> impl Strategy<Value = String> {
    multi_line(PostBody::MAX_CHARS).prop_filter_map("not a valid post body", |s| {
        PostBody::parse(&s).ok().map(PostBody::into_inner)
    })
}

fn comment_body() -> impl Strategy<Value = String> {
    multi_line(CommentBody::MAX_CHARS).prop_filter_map("not a valid comment", |s| {
        CommentBody::parse(&s).ok().map(CommentBody::into_inner)
    })
}

/// Emails as `Email::parse` accepts them, except for one known divergence: a domain
/// label with `--` as its 3rd and 4th characters (`ab--cd`, or a malformed `xn--`
/// A-label). RFC 5321's grammar allows it and `Email::parse` accepts it, but the
/// validator's `email` format applies RFC 5891 (such labels are reserved for IDNA
/// A-labels) and refuses it. No registry hands out such a domain; until `Email::parse`
/// refuses it too, it is left out here rather than dropping `format: email`.
fn email() -> impl Strategy<Value = String> {
    let everyday =
        "[a-z0-9][a-z0-9._+-]{0,15}@[a-z0-9]{1,10}(\\.[a-z0-9-]{1,10}){0,2}\\.[a-z]{2,6}";
    let unusual = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,10}){0,2}@[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?(\\.[A-Za-z0-9]{1,10}){1,3}";
    let long = (1..=64_usize, 250..=256_usize).prop_map(|(local, total)| email_of(local, total));
    prop_oneof![1 => everyday, 1 => unusual, 2 => long]
        .prop_filter("a domain label reserved for IDNA", |s: &String| {
            let domain = s.rsplit('@').next().unwrap_or_default();
            !domain.split('.').any(|label| label.get(2..4) == Some("--"))
        })
        .prop_filter_map("not a valid email", |s: String| {
            Email::parse(&s).ok().map(Email::into_inner)
        })
}

/// An address of exactly `total` characters with a local part of `local` (so both sides
/// of the 254 limit are tried): the domain is as few labels of at most 63 as fit.
fn email_of(local: usize, total: usize) -> String {
    let domain = total - local - 1;
    let labels = ((domain + 1).div_ceil(64)).max(2);
    let letters = domain - (labels - 1);
    let label_lengths = (0..labels).map(|i| letters / labels + usize::from(i < letters % labels));
    let domain: Vec<String> = label_lengths.map(|n| "d".repeat(n)).collect();
    format!("{}@{}", "l".repeat(local), domain.join("."))
}

/// A set of roles as the domain keeps it: sorted, without repeats.
fn roles() -> impl Strategy<Value = Vec<Role>> {
    proptest::sample::subsequence(vec![Role::User, Role::Admin], 0..=2)
}

/// The roles a registration records: the registering token's among `user` and `admin`,
/// always with `user` (sorted, without repeats).
fn registered_roles() -> impl Strategy<Value = Vec<Role>> {
    roles().prop_map(|mut roles| {
        roles.push(Role::User);
        roles.sort();
        roles.dedup();
        roles
    })
}

/// A `jti` as `Jti::parse` accepts it: visible ASCII, of any length up to the limit
/// (a few over included, then dropped), UUID-shaped ones too (what Keycloak issues).
fn jti() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text("", "[!-~]", Jti::MAX_CHARS, ""),
        1 => uuid().prop_map(|id| id.to_string()),
    ]
    .prop_filter_map("not a valid jti", |s: String| {
        Jti::parse(&s).ok().map(|jti| jti.as_str().to_owned())
    })
}

/// Unix seconds as a clock gives them (or an `exp`): mostly between 2000 and 2100, and
/// any other non-negative one.
fn unix_seconds() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => 946_684_800_i64..4_102_444_800_i64,
        1 => 0..=i64::MAX,
    ]
}

/// One strategy per variant, in `variant_index` order.
fn variant_strategies() -> Vec<BoxedStrategy<Event>> {
    let user = |e: UserEvent| Event::User(e);
    let post = |e: PostEvent| Event::Post(e);
    vec![
        (user_id(), email(), name(), registered_roles())
            .prop_map(move |(id, email, name, roles)| {
                user(UserEvent::Registered(UserRegistered {
                    id,
                    email,
                    name,
                    roles,
                }))
            })
            .boxed(),
        (user_id(), email(), name())
            .prop_map(move |(id, email, name)| {
                user(UserEvent::Updated(UserUpdated { id, email, name }))
            })
            .boxed(),
        (user_id(), roles(), roles())
            .prop_map(move |(id, roles, previous_roles)| {
                user(UserEvent::RoleChanged(UserRoleChanged {
                    id,
                    roles,
                    previous_roles,
                }))
            })
            .boxed(),
        user_id()
            .prop_map(move |id| user(UserEvent::Deactivated(UserDeactivated { id })))
            .boxed(),
        (post_id(), user_id(), title(), post_body())
            .prop_map(move |(id, author_id, title, body)| {
                post(PostEvent::Created(PostCreated {
                    id,
                    author_id,
                    title,
                    body,
                }))
            })
            .boxed(),
        (post_id(), title(), post_body())
            .prop_map(move |(id, title, body)| {
                post(PostEvent::Updated(PostUpdated { id, title, body }))
            })
            .boxed(),
        (post_id(), user_id())
            .prop_map(move |(id, author_id)| {
                post(PostEvent::Published(PostPublished { id, author_id }))
            })
            .boxed(),
        (post_id(), user_id(), user_id())
            .prop_map(move |(id, author_id, by)| {
                post(PostEvent::Deleted(PostDeleted { id, author_id, by }))
            })
            .boxed(),
        (
            post_id(),
            comment_id(),
            user_id(),
            user_id(),
            comment_body(),
        )
            .prop_map(
                move |(post_id, comment_id, author_id, post_author_id, body)| {
                    post(PostEvent::CommentAdded(CommentAdded {
                        post_id,
                        comment_id,
                        author_id,
                        post_author_id,
                        body,
                    }))
                },
            )
            .boxed(),
        (post_id(), user_id(), user_id())
            .prop_map(move |(post_id, user_id, post_author_id)| {
                post(PostEvent::Liked(PostLiked {
                    post_id,
                    user_id,
                    post_author_id,
                }))
            })
            .boxed(),
        (post_id(), user_id(), user_id())
            .prop_map(move |(post_id, user_id, post_author_id)| {
                post(PostEvent::Unliked(PostUnliked {
                    post_id,
                    user_id,
                    post_author_id,
                }))
            })
            .boxed(),
        (user_id(), unix_seconds())
            .prop_map(move |(id, issued_up_to)| {
                user(UserEvent::TokensRevoked(UserTokensRevoked {
                    id,
                    issued_up_to,
                }))
            })
            .boxed(),
        // `expires_at` is the token's `exp` as the admin gave it, not passed yet.
        (jti(), unix_seconds())
            .prop_map(|(jti, expires_at)| {
                Event::Token(TokenEvent::Revoked(TokenRevoked { jti, expires_at }))
            })
            .boxed(),
    ]
}

fn any_event() -> impl Strategy<Value = Event> {
    Union::new(variant_strategies())
}

/// One generated event of every variant, checked to cover them all.
pub(crate) fn one_of_each() -> Vec<Event> {
    let mut runner = TestRunner::deterministic();
    let events: Vec<Event> = variant_strategies()
        .into_iter()
        .map(|strategy| strategy.new_tree(&mut runner).unwrap().current())
        .collect();
    let indices: Vec<usize> = events.iter().map(variant_index).collect();
    assert_eq!(
        indices,
        (0..VARIANTS).collect::<Vec<_>>(),
        "variant_strategies must hold one strategy per Event variant, in variant_index order"
    );
    events
}

pub(crate) fn event_types() -> BTreeSet<&'static str> {
    one_of_each().iter().map(Event::event_type).collect()
}

/// The stream an event is appended to.
pub(crate) fn stream_of(event: &Event) -> StreamId {
    match event {
        Event::User(
            UserEvent::Registered(UserRegistered { id, .. })
            | UserEvent::Updated(UserUpdated { id, .. })
            | UserEvent::RoleChanged(UserRoleChanged { id, .. })
            | UserEvent::Deactivated(UserDeactivated { id })
            | UserEvent::TokensRevoked(UserTokensRevoked { id, .. }),
        ) => StreamId::user(*id),
        Event::Post(
            PostEvent::Created(PostCreated { id, .. })
            | PostEvent::Updated(PostUpdated { id, .. })
            | PostEvent::Published(PostPublished { id, .. })
            | PostEvent::Deleted(PostDeleted { id, .. }),
        ) => StreamId::post(*id),
        Event::Post(
            PostEvent::CommentAdded(CommentAdded { post_id, .. })
            | PostEvent::Liked(PostLiked { post_id, .. })
            | PostEvent::Unliked(PostUnliked { post_id, .. }),
        ) => StreamId::post(*post_id),
        Event::Token(TokenEvent::Revoked(TokenRevoked { jti, .. })) => {
            StreamId::token(TokenId::of_jti(jti))
        }
    }
}

fn metadata() -> impl Strategy<Value = Metadata> {
    let header = |max: usize| proptest::option::of(regex(&format!("[!-~]{{1,{max}}}")));
    (
        header(128),
        header(128),
        proptest::option::of(user_id()),
        header(128),
        header(55),
    )
        .prop_map(
            |(correlation_id, causation_id, actor_id, request_id, traceparent)| Metadata {
                correlation_id,
                causation_id,
                actor_id,
                request_id,
                traceparent,
            },
        )
}

/// Microsecond timestamps (what Postgres keeps) from 2000 to 2100.
fn recorded_at() -> impl Strategy<Value = DateTime<Utc>> {
    (946_684_800_000_000_i64..4_102_444_800_000_000_i64)
        .prop_map(|micros| DateTime::from_timestamp_micros(micros).unwrap())
}

pub(crate) fn any_recorded_event() -> impl Strategy<Value = (Event, RecordedEvent)> {
    (
        any_event(),
        uuid(),
        1..i64::MAX,
        1..i64::MAX,
        metadata(),
        recorded_at(),
    )
        .prop_map(
            |(event, event_id, position, version, metadata, recorded_at)| {
                let recorded = RecordedEvent {
                    position: Position(position),
                    version: Version(version),
                    event_id: EventId(event_id),
                    metadata,
                    recorded_at,
                    ..recorded(&event)
                };
                (event, recorded)
            },
        )
}

/// `event` as the log stores it, in its stream, at the first position and version.
pub(crate) fn recorded(event: &Event) -> RecordedEvent {
    RecordedEvent {
        position: Position(1),
        event_id: EventId(uuid::Uuid::from_u128(1)),
        stream_id: stream_of(event),
        version: Version(1),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        data: event.data(),
        metadata: Metadata::default(),
        recorded_at: DateTime::from_timestamp_micros(1_767_268_800_000_000).unwrap(),
    }
}
