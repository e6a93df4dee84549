//! `schemas/` checked against the code: every event validates against the JSON Schema
//! its `dataschema` names, the OpenAPI document lists exactly the routes command-api
//! serves, and the AsyncAPI document names every subject events are published on.
//!
//! No database or broker is needed: the events are generated, and the routes are read
//! from command-api's source.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use events::domain::post::{
    CommentAdded, PostCreated, PostDeleted, PostLiked, PostPublished, PostUnliked, PostUpdated,
};
use events::domain::user::{UserDeactivated, UserRegistered, UserRoleChanged, UserUpdated};
use events::domain::{
    CommentBody, Email, Event, Name, PostBody, PostEvent, Role, Title, UserEvent,
};
use events::envelope;
use events::event_log::{Metadata, RecordedEvent};
use events::ids::{CommentId, EventId, Position, PostId, StreamId, UserId, Version};
use jsonschema::Validator;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::Value;

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";
const DATASCHEMA_PREFIX: &str = "urn:keel:schemas:";
const CLOUDEVENT_SCHEMA: &str = "events/cloudevent.v1.json";
const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

// ---------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

fn schemas_dir() -> PathBuf {
    workspace_root().join("schemas")
}

fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn read_yaml(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// `urn:keel:schemas:events/<type>.v<n>.json` -> `events/<type>.v<n>.json` (relative to
/// `schemas/`).
fn schema_file_of(dataschema: &str) -> String {
    dataschema
        .strip_prefix(DATASCHEMA_PREFIX)
        .unwrap_or_else(|| {
            panic!("dataschema {dataschema:?} does not start with {DATASCHEMA_PREFIX}")
        })
        .to_owned()
}

fn compile(name: &str, schema: &Value) -> Validator {
    if let Err(error) = jsonschema::meta::validate(schema) {
        panic!("schemas/{name} is not a valid JSON Schema: {error}");
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(schema)
        .unwrap_or_else(|e| panic!("schemas/{name} does not compile: {e}"))
}

/// Every violation, with where in the instance it is.
fn violations(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect()
}

// ---------------------------------------------------------------------------------
// Every event variant, generated
// ---------------------------------------------------------------------------------

/// How many variants `Event` has. `variant_index` does not compile when one is added:
/// give it the next index, raise this, and add its strategy to `variant_strategies`.
const VARIANTS: usize = 11;

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

/// One strategy per variant, in `variant_index` order.
fn variant_strategies() -> Vec<BoxedStrategy<Event>> {
    let user = |e: UserEvent| Event::User(e);
    let post = |e: PostEvent| Event::Post(e);
    vec![
        (user_id(), email(), name(), roles())
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
    ]
}

fn any_event() -> impl Strategy<Value = Event> {
    Union::new(variant_strategies())
}

/// One generated event of every variant, checked to cover them all.
fn one_of_each() -> Vec<Event> {
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

fn event_types() -> BTreeSet<&'static str> {
    one_of_each().iter().map(Event::event_type).collect()
}

/// The stream an event is appended to.
fn stream_of(event: &Event) -> StreamId {
    match event {
        Event::User(
            UserEvent::Registered(UserRegistered { id, .. })
            | UserEvent::Updated(UserUpdated { id, .. })
            | UserEvent::RoleChanged(UserRoleChanged { id, .. })
            | UserEvent::Deactivated(UserDeactivated { id }),
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

fn any_recorded_event() -> impl Strategy<Value = (Event, RecordedEvent)> {
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
                    event_id: EventId(event_id),
                    stream_id: stream_of(&event),
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

/// The compiled schema of each event type, by the `dataschema` naming it.
fn event_validators() -> BTreeMap<String, Validator> {
    one_of_each()
        .iter()
        .map(|event| {
            let urn = envelope::dataschema(event.event_type(), event.schema_version());
            let file = schema_file_of(&urn);
            let validator = compile(&file, &read_json(&schemas_dir().join(&file)));
            (urn, validator)
        })
        .collect()
}

#[test]
fn every_event_validates_against_its_schema() {
    let data_schemas = event_validators();
    let cloudevent = compile(
        CLOUDEVENT_SCHEMA,
        &read_json(&schemas_dir().join(CLOUDEVENT_SCHEMA)),
    );
    proptest!(|((event, recorded) in any_recorded_event())| {
        let urn = envelope::dataschema(event.event_type(), event.schema_version());
        let validator = &data_schemas[&urn];
        let data = event.data();
        let errors = violations(validator, &data);
        prop_assert!(
            errors.is_empty(),
            "the data of {} does not validate against {urn}:\n  {}\ndata: {data}",
            event.event_type(),
            errors.join("\n  ")
        );

        let json = envelope::to_json(&recorded).unwrap();
        let errors = violations(&cloudevent, &json);
        prop_assert!(
            errors.is_empty(),
            "the CloudEvent of {} does not validate against schemas/{CLOUDEVENT_SCHEMA}:\n  {}\nevent: {json}",
            event.event_type(),
            errors.join("\n  ")
        );
    });
}

#[test]
fn every_event_type_has_a_schema_and_every_schema_an_event_type() {
    let types = event_types();
    let expected: BTreeSet<String> = one_of_each()
        .iter()
        .map(|e| schema_file_of(&envelope::dataschema(e.event_type(), e.schema_version())))
        .collect();

    let dir = schemas_dir().join("events");
    let present: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| format!("events/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|file| file != CLOUDEVENT_SCHEMA)
        .collect();

    let missing: Vec<_> = expected.difference(&present).collect();
    let orphaned: Vec<_> = present.difference(&expected).collect();
    assert!(
        missing.is_empty() && orphaned.is_empty(),
        "schemas/ and the event types disagree.\n  event types without a schema file: {missing:?}\n  schema files without an event type: {orphaned:?}"
    );

    for file in &expected {
        let schema = read_json(&schemas_dir().join(file));
        compile(file, &schema);
        let urn = format!("{DATASCHEMA_PREFIX}{file}");
        assert_eq!(schema["$schema"], DRAFT_2020_12, "schemas/{file}: $schema");
        assert_eq!(
            schema["$id"],
            urn.as_str(),
            "schemas/{file}: $id must be its dataschema"
        );
        assert_eq!(
            schema["additionalProperties"], false,
            "schemas/{file}: events deny unknown fields, so must the schema"
        );
    }

    let cloudevent = read_json(&schemas_dir().join(CLOUDEVENT_SCHEMA));
    let listed: BTreeSet<&str> = cloudevent["properties"]["type"]["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("schemas/{CLOUDEVENT_SCHEMA}: properties.type.enum is missing"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        listed, types,
        "schemas/{CLOUDEVENT_SCHEMA}: the `type` enum must list exactly the event types"
    );
}

// ---------------------------------------------------------------------------------
// OpenAPI against the router
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
}

/// A small Rust tokenizer: identifiers, string literals (plain and raw) and punctuation;
/// comments, numbers, char literals and whitespace are dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    text.push(ch);
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Str(text));
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let raw_string =
                matches!(ident.as_str(), "r" | "br") && matches!(chars.get(i), Some('"' | '#'));
            if raw_string {
                let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
                i += hashes + 1;
                let closing: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let rest: String = chars[i..].iter().collect();
                let end = rest.find(&closing).unwrap_or(rest.len());
                tokens.push(Token::Str(rest[..end].to_owned()));
                i += rest[..end].chars().count() + closing.chars().count();
            } else {
                tokens.push(Token::Ident(ident));
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Drops every item under `#[cfg(test)]`: the attribute and what follows it up to the
/// item's end (a `;` or a closed `{ .. }` block at its own level).
fn without_test_items(tokens: Vec<Token>) -> Vec<Token> {
    let attribute: Vec<Token> = tokenize("#[cfg(test)]");
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if !tokens[i..].starts_with(&attribute) {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += attribute.len();
        let mut depth = 0_usize;
        while let Some(token) = tokens.get(i) {
            i += 1;
            match token {
                Token::Punct('{' | '(' | '[') => depth += 1,
                Token::Punct('}') if depth == 1 => break,
                Token::Punct('}' | ')' | ']') => depth = depth.saturating_sub(1),
                Token::Punct(';') if depth == 0 => break,
                _ => {}
            }
        }
    }
    kept
}

/// `(METHOD, path)` -> the file that routes it.
type Routes = BTreeMap<(String, String), String>;

/// The routes in one file: every `.route("<path>", <method router>)`, where the method
/// router chains `get|post|put|patch|delete(handler)` (bare or path-qualified). Anything
/// the scan does not understand fails the test rather than being skipped. Items under
/// `#[cfg(test)]` are not the served router.
fn routes_in(file: &str, source: &str, routes: &mut Routes) {
    let tokens = without_test_items(tokenize(source));
    let ident = |i: usize| match tokens.get(i) {
        Some(Token::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let punct = |i: usize, c: char| tokens.get(i) == Some(&Token::Punct(c));
    for i in 0..tokens.len() {
        if !punct(i, '.') || !punct(i + 2, '(') {
            continue;
        }
        match ident(i + 1) {
            Some("route") => {}
            Some(other @ ("nest" | "nest_service" | "route_service" | "route_layer")) => panic!(
                "{file}: `.{other}(..)` adds routes the scan in tests/tests/schemas.rs does not \
                 understand; extend `routes_in`"
            ),
            _ => continue,
        }
        let Some(Token::Str(path)) = tokens.get(i + 3) else {
            panic!("{file}: a `.route(` whose first argument is not a string literal");
        };
        assert!(
            punct(i + 4, ','),
            "{file}: `.route({path:?}` is not followed by `,`"
        );
        let mut depth = 0;
        let mut methods = Vec::new();
        let mut j = i + 5;
        while j < tokens.len() {
            match &tokens[j] {
                Token::Punct('(' | '[' | '{') => depth += 1,
                Token::Punct(')' | ']' | '}') if depth == 0 => break,
                Token::Punct(')' | ']' | '}') => depth -= 1,
                Token::Ident(name) if depth == 0 && punct(j + 1, '(') => {
                    let method = name.as_str();
                    assert!(
                        matches!(method, "get" | "post" | "put" | "patch" | "delete"),
                        "{file}: route {path:?} uses `{method}(..)`, which the scan in \
                         tests/tests/schemas.rs does not understand; extend `routes_in`"
                    );
                    methods.push(method.to_uppercase());
                }
                _ => {}
            }
            j += 1;
        }
        assert!(!methods.is_empty(), "{file}: route {path:?} has no method");
        for method in methods {
            routes.insert((method, path.clone()), file.to_owned());
        }
    }
}

fn served_routes() -> Routes {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("command-api/src"), &mut files);
    files.sort();
    let mut routes = Routes::new();
    for path in files {
        let source = fs::read_to_string(&path).unwrap();
        let name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        routes_in(&name, &source, &mut routes);
    }
    routes
}

/// `(METHOD, path)` -> whether the operation is marked `x-keel-status: planned`.
fn documented_operations(openapi: &Value) -> BTreeMap<(String, String), bool> {
    let paths = openapi["paths"]
        .as_object()
        .expect("schemas/openapi.yaml has no `paths`");
    let mut operations = BTreeMap::new();
    for (path, item) in paths {
        for method in HTTP_METHODS {
            if let Some(operation) = item.get(method) {
                let planned = operation.get("x-keel-status") == Some(&Value::from("planned"));
                operations.insert((method.to_uppercase(), path.clone()), planned);
            }
        }
    }
    operations
}

#[test]
fn the_route_scan_reads_every_form_the_router_uses() {
    let source = r#"
        // .route("/commented", get(nothing))
        #[cfg(test)]
        use crate::testing::helper;
        #[cfg(test)]
        fn test_router() -> Router { Router::new().route("/test-fn", get(t)) }
        pub fn router() -> Router<AppState> {
            Router::new()
                .route("/a", post(create))
                .route("/a/{id}", axum::routing::get(read).patch(update).delete(delete))
                .route("/a/{id}/like", put(like).delete(unlike))
                .route("/b/{id}", get(handler_with(State(x), "str)ing")))
        }
        #[cfg(test)]
        mod tests { fn t() { Router::new().route("/test-only", get(t)); } }
    "#;
    let mut routes = Routes::new();
    routes_in("example.rs", source, &mut routes);
    let found: Vec<String> = routes.keys().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(
        found,
        [
            "DELETE /a/{id}",
            "DELETE /a/{id}/like",
            "GET /a/{id}",
            "GET /b/{id}",
            "PATCH /a/{id}",
            "POST /a",
            "PUT /a/{id}/like",
        ]
    );
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "schemas/openapi.yaml must be OpenAPI 3.1"
    );
    let documented = documented_operations(&openapi);
    let served = served_routes();
    assert!(
        served.contains_key(&("POST".to_owned(), "/api/users".to_owned())),
        "the route scan found no `POST /api/users`; it no longer reads the router: {served:?}"
    );

    let undocumented: Vec<String> = served
        .iter()
        .filter(|(route, _)| !documented.contains_key(*route))
        .map(|((method, path), file)| format!("{method} {path} (routed in {file})"))
        .collect();
    let unserved: Vec<String> = documented
        .iter()
        .filter(|(route, planned)| !**planned && !served.contains_key(*route))
        .map(|((method, path), _)| format!("{method} {path}"))
        .collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "schemas/openapi.yaml and command-api's router disagree.\n  \
         served but not documented: {undocumented:#?}\n  \
         documented (without `x-keel-status: planned`) but not served: {unserved:#?}"
    );
}

#[test]
fn every_path_parameter_is_declared() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let resolve = |p: &Value| match p.get("$ref").and_then(Value::as_str) {
        Some(pointer) => openapi
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("schemas/openapi.yaml: unresolved {pointer}"))
            .clone(),
        None => p.clone(),
    };
    let mut problems = Vec::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        let in_path: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for method in HTTP_METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let declared: BTreeSet<String> = [&item["parameters"], &operation["parameters"]]
                .into_iter()
                .filter_map(Value::as_array)
                .flatten()
                .map(resolve)
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
            if declared != in_path {
                problems.push(format!(
                    "{} {path}: path has {in_path:?}, parameters declare {declared:?}",
                    method.to_uppercase()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "schemas/openapi.yaml: {problems:#?}");
}

// ---------------------------------------------------------------------------------
// AsyncAPI
// ---------------------------------------------------------------------------------

/// Follows a local `$ref` (`#/...`) if `value` is one.
fn deref<'a>(document: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(pointer) if pointer.starts_with('#') => document
            .pointer(&pointer[1..])
            .unwrap_or_else(|| panic!("schemas/asyncapi.yaml: unresolved $ref {pointer}")),
        _ => value,
    }
}

/// Every `$ref` string anywhere under `value`.
fn refs_in(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, field) in fields {
                match (key.as_str(), field) {
                    ("$ref", Value::String(target)) => found.push(target.clone()),
                    _ => refs_in(field, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs_in(item, found)),
        _ => {}
    }
}

#[test]
fn the_asyncapi_document_names_every_event_subject() {
    let asyncapi = read_yaml(&schemas_dir().join("asyncapi.yaml"));
    assert!(
        asyncapi["asyncapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "schemas/asyncapi.yaml must be AsyncAPI 3"
    );
    let channels = asyncapi["channels"]
        .as_object()
        .expect("schemas/asyncapi.yaml has no `channels`");
    let by_address: BTreeMap<&str, &Value> = channels
        .values()
        .filter_map(|c| Some((c["address"].as_str()?, c)))
        .collect();

    let mut problems = Vec::new();
    for event in one_of_each() {
        let event_type = event.event_type();
        let subject = format!("events.{event_type}");
        let Some(channel) = by_address.get(subject.as_str()) else {
            problems.push(format!("no channel with address {subject}"));
            continue;
        };
        let data_schema = format!(
            "./{}",
            schema_file_of(&envelope::dataschema(event_type, event.schema_version()))
        );
        let messages = channel["messages"].as_object().cloned().unwrap_or_default();
        if messages.is_empty() {
            problems.push(format!("{subject}: the channel has no message"));
        }
        for (id, message) in &messages {
            let message = deref(&asyncapi, message);
            if message["contentType"] != "application/cloudevents+json" {
                problems.push(format!(
                    "{subject}: message {id} must have contentType application/cloudevents+json"
                ));
            }
            let headers = deref(&asyncapi, &message["headers"]);
            let required = headers["required"].as_array().cloned().unwrap_or_default();
            for header in ["Nats-Msg-Id", "content-type"] {
                if !required.contains(&Value::from(header)) {
                    problems.push(format!(
                        "{subject}: message {id} must require header {header}"
                    ));
                }
            }
            let mut refs = Vec::new();
            refs_in(&message["payload"], &mut refs);
            for needed in [format!("./{CLOUDEVENT_SCHEMA}"), data_schema.clone()] {
                if !refs.contains(&needed) {
                    problems.push(format!(
                        "{subject}: the payload of message {id} does not reference {needed}"
                    ));
                }
            }
        }
    }

    let types = event_types();
    for address in by_address.keys() {
        let stray = address
            .strip_prefix("events.")
            .is_some_and(|event_type| !types.contains(event_type));
        if stray {
            problems.push(format!("channel {address} names no event type"));
        }
    }
    if !by_address.contains_key("notify.user.{user_id}") {
        problems.push("no channel with address notify.user.{user_id}".to_owned());
    }
    let dead_letters = channels
        .values()
        .any(|c| c["x-keel-stream"] == "EVENTS_DLQ" || c["title"] == "EVENTS_DLQ");
    if !dead_letters {
        problems.push("no channel describes the dead-letter stream EVENTS_DLQ".to_owned());
    }
    assert!(problems.is_empty(), "schemas/asyncapi.yaml: {problems:#?}");
}

// ---------------------------------------------------------------------------------
// References between the files
// ---------------------------------------------------------------------------------

#[test]
fn every_reference_in_the_schemas_resolves() {
    let dir = schemas_dir();
    let mut documents: Vec<(String, Value)> = vec![
        (
            "openapi.yaml".to_owned(),
            read_yaml(&dir.join("openapi.yaml")),
        ),
        (
            "asyncapi.yaml".to_owned(),
            read_yaml(&dir.join("asyncapi.yaml")),
        ),
    ];
    for entry in fs::read_dir(dir.join("events")).unwrap() {
        let name = format!("events/{}", entry.unwrap().file_name().to_string_lossy());
        let value = read_json(&dir.join(&name));
        documents.push((name, value));
    }

    let mut problems = Vec::new();
    for (name, document) in &documents {
        let mut refs = Vec::new();
        refs_in(document, &mut refs);
        for target in refs {
            let (file, fragment) = target.split_once('#').unwrap_or((&target, ""));
            let resolved = if file.is_empty() {
                document.pointer(fragment).is_some()
            } else {
                let base = Path::new(name).parent().unwrap_or(Path::new(""));
                let path = dir.join(base).join(file);
                path.is_file() && read_json(&path).pointer(fragment).is_some()
            };
            if !resolved {
                problems.push(format!("schemas/{name}: $ref {target} does not resolve"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
