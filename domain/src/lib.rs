//! Keel's pure domain: what the pipeline carries, with no I/O (no database, no runtime,
//! no Redis, no NATS). The store (`events`), the command API, the projectors and the
//! relay all build on it; it depends on none of them.
//!
//! Pipeline: command -> **decide** -> event log (Postgres, also the outbox) -> publisher ->
//! JetStream (as a **CloudEvent**) -> projectors / relay (**notifications**) -> Redis ->
//! WebSocket.
//!
//! - [`ids`]: identity and ordering newtypes (`UserId`, `StreamId`, `Version`, `Position`…).
//! - [`aggregate`]: the deciders behind one interface (`Command`, `State`, `Actor`, `DomainError`).
//! - [`user`], [`post`], [`token`]: each aggregate's commands, events, `decide` and `apply`.
//! - [`values`]: the validated input values (`Email`, `Title`, `Role`…).
//! - [`event`]: every domain event as one enum, and its stored type and payload.
//! - [`recorded`]: an event as the log recorded it (`RecordedEvent`, `Metadata`).
//! - [`envelope`]: the CloudEvents 1.0 form of a recorded event.
//! - [`notification`]: what the relay derives from events (`Trigger`, `Addressed`).
//! - [`policy`]: what authorization folds from the log, and the invalidation channels.

pub mod aggregate;
pub mod envelope;
pub mod event;
pub mod ids;
pub mod notification;
pub mod policy;
pub mod post;
pub mod recorded;
pub mod token;
pub mod user;
pub mod values;

pub use aggregate::{Actor, Command, DomainError, Standing, State};
pub use event::{DecodeError, Event};
pub use post::{Post, PostCommand, PostEvent, PostStatus};
pub use token::{Token, TokenCommand, TokenEvent};
pub use user::{User, UserCommand, UserEvent};
pub use values::{CommentBody, Email, Invalid, Jti, Name, PostBody, Role, Title};
