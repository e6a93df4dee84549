//! Property tests of the domain: event payloads and the CloudEvents envelope
//! round-trip, and the deciders keep their invariants over random command sequences.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use cloudevents::event::{ExtensionValue, SpecVersion};
use cloudevents::{AttributesReader, Data};
use domain::envelope;
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
    Actor, Command, CommentBody, DomainError, Email, Event, Name, PostBody, PostCommand, PostEvent,
    PostStatus, Role, Standing, State, Title, TokenEvent, UserCommand, UserEvent,
};
use proptest::prelude::*;
use proptest::sample::select;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Arbitrary events
// ---------------------------------------------------------------------------

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
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

/// Any text at all: printable unicode, or any `char` (control characters and NUL too).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
    ]
}

/// Roles as the log may hold them: any order, repeats allowed.
fn roles() -> impl Strategy<Value = Vec<Role>> {
    prop::collection::vec(select(vec![Role::User, Role::Admin]), 0..4)
}

fn user_event() -> impl Strategy<Value = UserEvent> {
    prop_oneof![
        (user_id(), text(), text(), roles()).prop_map(|(id, email, name, roles)| {
            UserEvent::Registered(UserRegistered {
                id,
                email,
                name,
                roles,
            })
        }),
        (user_id(), text(), text()).prop_map(|(id, email, name)| UserEvent::Updated(UserUpdated {
            id,
            email,
            name
        })),
        (user_id(), roles(), roles()).prop_map(|(id, roles, previous_roles)| {
            UserEvent::RoleChanged(UserRoleChanged {
                id,
                roles,
                previous_roles,
            })
        }),
        user_id().prop_map(|id| UserEvent::Deactivated(UserDeactivated { id })),
        (user_id(), any::<i64>()).prop_map(|(id, issued_up_to)| {
            UserEvent::TokensRevoked(UserTokensRevoked { id, issued_up_to })
        }),
    ]
}

fn post_event() -> impl Strategy<Value = PostEvent> {
    prop_oneof![
        (post_id(), user_id(), text(), text()).prop_map(|(id, author_id, title, body)| {
            PostEvent::Created(PostCreated {
                id,
                author_id,
                title,
                body,
            })
        }),
        (post_id(), text(), text()).prop_map(|(id, title, body)| PostEvent::Updated(PostUpdated {
            id,
            title,
            body
        })),
        (post_id(), user_id())
            .prop_map(|(id, author_id)| PostEvent::Published(PostPublished { id, author_id })),
        (post_id(), user_id(), user_id()).prop_map(|(id, author_id, by)| {
            PostEvent::Deleted(PostDeleted { id, author_id, by })
        }),
        (post_id(), comment_id(), user_id(), user_id(), text()).prop_map(
            |(post_id, comment_id, author_id, post_author_id, body)| {
                PostEvent::CommentAdded(CommentAdded {
                    post_id,
                    comment_id,
                    author_id,
                    post_author_id,
                    body,
                })
            }
        ),
        (post_id(), user_id(), user_id()).prop_map(|(post_id, user_id, post_author_id)| {
            PostEvent::Liked(PostLiked {
                post_id,
                user_id,
                post_author_id,
            })
        }),
        (post_id(), user_id(), user_id()).prop_map(|(post_id, user_id, post_author_id)| {
            PostEvent::Unliked(PostUnliked {
                post_id,
                user_id,
                post_author_id,
            })
        }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => user_event().prop_map(Event::User),
        7 => post_event().prop_map(Event::Post),
        1 => ("[!-~]{1,40}", any::<i64>()).prop_map(|(jti, expires_at)| {
            Event::Token(TokenEvent::Revoked(TokenRevoked { jti, expires_at }))
        }),
    ]
}

fn metadata() -> impl Strategy<Value = Metadata> {
    (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(user_id()),
        prop::option::of(text()),
        prop::option::of(text()),
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

/// A UTC time between 0000-01-01 and 9999-12-31 (what RFC 3339 can spell), to the
/// microsecond (what Postgres `timestamptz` keeps).
fn recorded_at() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_167_219_200_i64..=253_402_300_799, 0_u32..1_000_000).prop_map(|(secs, micros)| {
        DateTime::from_timestamp(secs, micros * 1_000).expect("the range is representable")
    })
}

/// A logged event carrying `event`, in a stream of the right kind.
fn recorded_event() -> impl Strategy<Value = (Event, RecordedEvent)> {
    (
        event(),
        1..=i64::MAX,
        1..=i64::MAX,
        uuid(),
        uuid(),
        metadata(),
        recorded_at(),
    )
        .prop_map(
            |(event, position, version, event_id, aggregate, metadata, recorded_at)| {
                let stream_id = match event {
                    Event::User(_) => StreamId::user(UserId(aggregate)),
                    Event::Post(_) => StreamId::post(PostId(aggregate)),
                    Event::Token(_) => StreamId::token(TokenId(aggregate)),
                };
                let recorded = RecordedEvent {
                    position: Position(position),
                    event_id: EventId(event_id),
                    stream_id,
                    version: Version(version),
                    event_type: event.event_type().to_owned(),
                    schema_version: event.schema_version(),
                    data: event.data(),
                    metadata,
                    recorded_at,
                };
                (event, recorded)
            },
        )
}

// ---------------------------------------------------------------------------
// Arbitrary valid commands over a small world
// ---------------------------------------------------------------------------

/// Three users; the first one's token carries the admin role.
const USERS: [u128; 3] = [1, 2, 3];
const ADMIN: usize = 0;
/// Two posts.
const POSTS: [u128; 2] = [101, 102];

fn world_user(i: usize) -> UserId {
    UserId(Uuid::from_u128(USERS[i]))
}

fn world_post(i: usize) -> PostId {
    PostId(Uuid::from_u128(POSTS[i]))
}

/// Small pools make "change to the same value" (an empty decision) likely, and the
/// free-form alternative covers unicode and whitespace trimming.
fn name() -> impl Strategy<Value = Name> {
    prop_oneof![
        select(vec!["Ada", "Bob", "  Cy  ", "Zoë"]).prop_map(String::from),
        "\\PC{1,30}",
    ]
    .prop_filter_map("not a valid name", |s| Name::parse(&s).ok())
}

fn email() -> impl Strategy<Value = Email> {
    prop_oneof![
        select(vec![
            "ada@example.com",
            "bob@example.org",
            " cy@mail.example.net "
        ])
        .prop_map(String::from),
        "[a-z0-9.+]{1,10}@[a-z0-9-]{1,10}\\.[a-z]{2,5}",
    ]
    .prop_filter_map("not a valid email", |s| Email::parse(&s).ok())
}

fn title() -> impl Strategy<Value = Title> {
    prop_oneof![
        select(vec!["Hello", "Événement", "  Padded  "]).prop_map(String::from),
        "\\PC{1,40}",
    ]
    .prop_filter_map("not a valid title", |s| Title::parse(&s).ok())
}

fn post_body() -> impl Strategy<Value = PostBody> {
    prop_oneof![
        select(vec!["World", "line\nline\tcol", "  body  "]).prop_map(String::from),
        "[\\PC\n\t]{1,80}",
    ]
    .prop_filter_map("not a valid body", |s| PostBody::parse(&s).ok())
}

fn comment_body() -> impl Strategy<Value = CommentBody> {
    "[\\PC\n]{1,40}".prop_filter_map("not a valid comment", |s| CommentBody::parse(&s).ok())
}

fn user_command() -> impl Strategy<Value = UserCommand> {
    prop_oneof![
        2 => (email(), name(), roles())
            .prop_map(|(email, name, roles)| UserCommand::Register { email, name, roles }),
        2 => (prop::option::of(email()), prop::option::of(name()))
            .prop_map(|(email, name)| UserCommand::Update { email, name }),
        2 => roles().prop_map(|roles| UserCommand::ChangeRoles { roles }),
        1 => Just(UserCommand::Deactivate),
    ]
}

fn post_command() -> impl Strategy<Value = PostCommand> {
    prop_oneof![
        2 => (title(), post_body()).prop_map(|(title, body)| PostCommand::Create { title, body }),
        2 => (prop::option::of(title()), prop::option::of(post_body()))
            .prop_map(|(title, body)| PostCommand::Update { title, body }),
        4 => Just(PostCommand::Publish),
        1 => Just(PostCommand::Delete),
        2 => (comment_id(), comment_body())
            .prop_map(|(comment_id, body)| PostCommand::AddComment { comment_id, body }),
        3 => Just(PostCommand::Like),
        2 => Just(PostCommand::Unlike),
    ]
}

/// A command sent by user `actor`: user commands mostly address the sender's own
/// record (as in real use), so that users get registered and then act.
fn command_by(actor: usize) -> impl Strategy<Value = Command> {
    let target = prop_oneof![3 => Just(actor), 1 => 0..USERS.len()];
    prop_oneof![
        1 => (target, user_command()).prop_map(|(i, command)| Command::User {
            id: world_user(i),
            command,
        }),
        3 => (0..POSTS.len(), post_command()).prop_map(|(i, command)| Command::Post {
            id: world_post(i),
            command,
        }),
    ]
}

/// Who sends which command, in order: most users register themselves first (in any
/// order), then anyone sends anything.
fn script() -> impl Strategy<Value = Vec<(usize, Command)>> {
    let prelude = prop::collection::vec((prop::bool::weighted(0.75), email(), name()), USERS.len())
        .prop_map(|registrations| {
            registrations
                .into_iter()
                .enumerate()
                .filter(|(_, (registers, _, _))| *registers)
                .map(|(i, (_, email, name))| {
                    let command = UserCommand::Register {
                        email,
                        name,
                        roles: vec![],
                    };
                    (
                        i,
                        Command::User {
                            id: world_user(i),
                            command,
                        },
                    )
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle();
    let step = (0..USERS.len()).prop_flat_map(|actor| (Just(actor), command_by(actor)));
    (prelude, prop::collection::vec(step, 0..=37)).prop_map(|(mut script, steps)| {
        script.extend(steps);
        script
    })
}

/// The stream an event belongs in, named by the ids inside it.
fn stream_named_by(event: &Event) -> StreamId {
    match event {
        Event::User(e) => StreamId::user(e.user_id()),
        Event::Post(e) => StreamId::post(e.post_id()),
        Event::Token(TokenEvent::Revoked(e)) => StreamId::token(TokenId::of_jti(&e.jti)),
    }
}

/// Whether a user stream's state says the user is registered and deactivated.
fn is_deactivated_user(state: &State) -> bool {
    matches!(state, State::User(Some(user)) if !user.active)
}

// ---------------------------------------------------------------------------
// A post its author alone can see
// ---------------------------------------------------------------------------

/// The history of a post that is a draft or deleted, with its author.
fn invisible_post_history() -> impl Strategy<Value = (PostId, UserId, Vec<PostEvent>)> {
    (
        post_id(),
        user_id(),
        title(),
        post_body(),
        prop::collection::vec((title(), post_body()), 0..3),
        // 0: still a draft, 1: deleted as a draft, 2: published, liked, commented, deleted.
        0..3_u8,
        prop::collection::vec(user_id(), 0..4),
        prop::collection::vec((comment_id(), user_id(), comment_body()), 0..3),
        user_id(),
    )
        .prop_map(
            |(id, author_id, title, body, updates, fate, likers, comments, admin)| {
                let mut history = vec![PostEvent::Created(PostCreated {
                    id,
                    author_id,
                    title: title.into_inner(),
                    body: body.into_inner(),
                })];
                history.extend(updates.into_iter().map(|(title, body)| {
                    PostEvent::Updated(PostUpdated {
                        id,
                        title: title.into_inner(),
                        body: body.into_inner(),
                    })
                }));
                if fate == 2 {
                    history.push(PostEvent::Published(PostPublished { id, author_id }));
                    history.extend(likers.into_iter().map(|user_id| {
                        PostEvent::Liked(PostLiked {
                            post_id: id,
                            user_id,
                            post_author_id: author_id,
                        })
                    }));
                    history.extend(comments.into_iter().map(|(comment_id, by, body)| {
                        PostEvent::CommentAdded(CommentAdded {
                            post_id: id,
                            comment_id,
                            author_id: by,
                            post_author_id: author_id,
                            body: body.into_inner(),
                        })
                    }));
                }
                if fate > 0 {
                    let by = if fate == 2 { admin } else { author_id };
                    history.push(PostEvent::Deleted(PostDeleted { id, author_id, by }));
                }
                (id, author_id, history)
            },
        )
}

/// Someone other than `author`, who is not deactivated, admin or not.
fn other_actor(author: UserId) -> impl Strategy<Value = Actor> {
    (
        user_id().prop_filter("the author", move |id| *id != author),
        any::<bool>(),
        select(vec![Standing::Active, Standing::Unregistered]),
    )
        .prop_map(|(id, admin, standing)| Actor {
            id,
            admin,
            standing,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_event_round_trips_through_serde(event in event()) {
        let data = event.data();
        prop_assert!(data.is_object(), "data is not a JSON object: {data}");
        let decoded = Event::decode(event.event_type(), &data);
        prop_assert!(decoded.is_ok(), "{:?}", decoded.err());
        prop_assert_eq!(decoded.unwrap(), event.clone());
        // The text form too, as the log and the bus carry it.
        let text = serde_json::to_string(&data).unwrap();
        let reparsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(Event::decode(event.event_type(), &reparsed).unwrap(), event);
    }

    #[test]
    fn every_event_round_trips_through_the_cloudevents_envelope(
        (event, recorded) in recorded_event(),
    ) {
        let json = envelope::to_json(&recorded);
        let text = serde_json::to_string(&json).unwrap();
        let cloud: cloudevents::Event = serde_json::from_str(&text).unwrap();

        prop_assert_eq!(cloud.specversion(), SpecVersion::V10);
        prop_assert_eq!(cloud.id(), recorded.event_id.to_string());
        prop_assert_eq!(cloud.ty(), event.event_type());
        let source = match event {
            Event::User(_) | Event::Token(_) => "/keel/users",
            Event::Post(_) => "/keel/blog",
        };
        prop_assert_eq!(cloud.source().as_str(), source);
        let subject = recorded.stream_id.to_string();
        prop_assert_eq!(cloud.subject(), Some(subject.as_str()));
        prop_assert_eq!(cloud.time(), Some(&recorded.recorded_at));
        prop_assert_eq!(cloud.datacontenttype(), Some("application/json"));
        let schema = envelope::dataschema(event.event_type(), event.schema_version());
        prop_assert_eq!(cloud.dataschema().map(|url| url.as_str()), Some(schema.as_str()));

        prop_assert_eq!(
            cloud.extension("position"),
            Some(&ExtensionValue::Integer(recorded.position.0))
        );
        prop_assert_eq!(
            cloud.extension("streamversion"),
            Some(&ExtensionValue::Integer(recorded.version.0))
        );
        let meta = &recorded.metadata;
        for (name, value) in [
            ("correlationid", &meta.correlation_id),
            ("causationid", &meta.causation_id),
            ("traceparent", &meta.traceparent),
        ] {
            prop_assert_eq!(
                cloud.extension(name).cloned(),
                value.clone().map(ExtensionValue::String),
                "extension {}", name
            );
        }
        let expected: BTreeSet<&str> = ["position", "streamversion"]
            .into_iter()
            .chain(meta.correlation_id.as_ref().map(|_| "correlationid"))
            .chain(meta.causation_id.as_ref().map(|_| "causationid"))
            .chain(meta.traceparent.as_ref().map(|_| "traceparent"))
            .collect();
        let actual: BTreeSet<&str> = cloud.iter_extensions().map(|(name, _)| name).collect();
        prop_assert_eq!(actual, expected);

        let Some(Data::Json(data)) = cloud.data() else {
            return Err(TestCaseError::fail(format!("data is not JSON: {:?}", cloud.data())));
        };
        prop_assert_eq!(data, &recorded.data);
        prop_assert_eq!(Event::decode(cloud.ty(), data).unwrap(), event);
    }

    #[test]
    fn versions_rise_by_one_per_event_and_deactivated_users_get_nothing(script in script()) {
        let mut streams: HashMap<StreamId, (State, Version)> = HashMap::new();
        let mut appended: Vec<(StreamId, Version)> = Vec::new();
        let mut deactivated: BTreeSet<UserId> = BTreeSet::new();

        for (actor_index, command) in &script {
            let actor_id = world_user(*actor_index);
            let standing = streams
                .get(&StreamId::user(actor_id))
                .map_or(Standing::Unregistered, |(state, _)| state.standing());
            let actor = Actor {
                id: actor_id,
                admin: *actor_index == ADMIN,
                standing,
            };
            let stream = command.stream_id();
            let (state, version) = streams
                .entry(stream.clone())
                .or_insert_with(|| (State::initial(&stream), Version::NONE));
            let decided = state.decide(&actor, command);

            // (b) A deactivated actor is refused everything.
            if standing == Standing::Deactivated {
                prop_assert!(
                    matches!(decided, Err(DomainError::Forbidden(_))),
                    "deactivated {:?} got {:?} for {:?}", actor, decided, command
                );
                prop_assert!(deactivated.contains(&actor_id));
            }
            let Ok(events) = decided else { continue };

            // (c) Nothing is appended on behalf of a user after their deactivation.
            prop_assert!(
                events.is_empty() || !deactivated.contains(&actor_id),
                "deactivated {:?} appended {:?}", actor, events
            );

            for event in &events {
                prop_assert_eq!(stream_named_by(event), stream.clone(), "{:?}", event);
                let was_deactivated = is_deactivated_user(state);
                let before = *version;
                state.apply(event);
                *version = version.next();
                prop_assert_eq!(version.0, before.0 + 1);
                appended.push((stream.clone(), *version));
                // (d) Deactivation is for good.
                if was_deactivated {
                    prop_assert!(is_deactivated_user(state), "{:?} came back", stream);
                }
                if let Event::User(UserEvent::Deactivated(e)) = event {
                    deactivated.insert(e.id);
                }
            }
        }

        // (a) Each stream's versions are 1, 2, 3… with no gap and no repeat.
        let mut seen: HashMap<&StreamId, i64> = HashMap::new();
        for (stream, version) in &appended {
            let last = seen.entry(stream).or_insert(0);
            prop_assert_eq!(version.0, *last + 1, "{:?}", stream);
            *last = version.0;
        }
        for (stream, (_, version)) in &streams {
            prop_assert_eq!(seen.get(stream).copied().unwrap_or(0), version.0);
        }
    }

    #[test]
    fn decide_never_appends_to_a_post_that_is_not_visible(
        ((id, author, history), actor) in invisible_post_history()
            .prop_flat_map(|(id, author, history)| {
                (Just((id, author, history)), other_actor(author))
            }),
        command in post_command(),
    ) {
        let stream = StreamId::post(id);
        let mut state = State::initial(&stream);
        for event in &history {
            state.apply(&Event::Post(event.clone()));
        }
        let State::Post(Some(post)) = &state else {
            return Err(TestCaseError::fail("the post was not created"));
        };
        prop_assert_ne!(post.status, PostStatus::Published);
        prop_assert_eq!(post.author_id, author);
        prop_assert_ne!(actor.id, author);

        // Even `Create`: "already exists" would tell a stranger that it exists.
        let result = state.decide(&actor, &Command::Post { id, command: command.clone() });
        prop_assert!(
            matches!(result, Err(DomainError::NotFound(_))),
            "{:?} got {:?} for {:?} on a {:?} post", actor, result, command, post.status
        );

        // Deactivated, they are refused before the post is even looked at.
        let deactivated = Actor { standing: Standing::Deactivated, ..actor };
        let result = state.decide(&deactivated, &Command::Post { id, command });
        prop_assert!(matches!(result, Err(DomainError::Forbidden(_))), "{:?}", result);
    }
}
