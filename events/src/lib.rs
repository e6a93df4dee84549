//! Keel's shared core. Every other crate builds on it; it depends on none of them.
//!
//! Pipeline: command -> **decide** -> **event log** (Postgres, also the outbox) ->
//! publisher -> JetStream -> projectors / relay -> Redis -> WebSocket.
//!
//! - [`database`]: create, migrate and connect Keel's database (TLS from its URL).
//! - [`ids`]: identity and ordering newtypes (`UserId`, `StreamId`, `Version`, `Position`…).
//! - [`domain`]: the User and Post aggregates as pure `decide`/`apply`, their events and
//!   the validated input values.
//! - [`event_log`]: append with optimistic concurrency and no-skip reads by position.
//! - [`envelope`]: the CloudEvents 1.0 form of a logged event.
//! - [`leader`]: one active instance among several (a Postgres advisory lock).
//! - [`lease`]: P partitions shared by a consumer group's instances, one owner each, fenced.
//! - [`nats`]: connecting to NATS as a principal; the dead-letter stream's names.
//! - [`notification`]: what the relay derives from events, its Redis keys and offsets.
//! - [`outbox`]: the publisher's checkpoint and republish requests (the log is the outbox).
//! - [`policy`]: what authorization folds from the log, and the invalidation channels.
//! - [`process`]: logging and the stop signal, the same in every binary.
//! - [`read_model`]: the projections, where their models live, how far each has applied.
//! - [`tls`]: Redis and NATS clients, over TLS to a private CA when configured.
//! - [`MIGRATOR`]: the schema, owned by `events/migrations`.

pub mod database;
pub mod domain;
pub mod envelope;
pub mod event_log;
pub mod ids;
pub mod leader;
pub mod lease;
pub mod nats;
pub mod notification;
pub mod outbox;
pub mod policy;
pub mod process;
pub mod read_model;
pub mod tls;

/// Every table Keel owns. Run on start by each binary (or `command-api migrate`) when the
/// schema is behind; safe to run concurrently.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
