//! Keel's store: the Postgres event log and what lives beside it, and the clients every
//! binary opens. Built on the pure `domain` crate; depends on no other Keel crate.
//!
//! Pipeline: command -> decide -> **event log** (Postgres, also the outbox) ->
//! publisher -> JetStream -> projectors / relay -> Redis -> WebSocket.
//!
//! - [`database`]: create, migrate and connect Keel's database (TLS from its URL).
//! - [`event_log`]: append with optimistic concurrency and no-skip reads by position.
//! - [`leader`]: one active instance among several (a Postgres advisory lock).
//! - [`lease`]: P partitions shared by a consumer group's instances, one owner each, fenced.
//! - [`nats`]: connecting to NATS as a principal; the dead-letter stream's names.
//! - [`outbox`]: the publisher's checkpoint and republish requests (the log is the outbox).
//! - [`partitions`]: `KEEL_PARTITIONS`: which partition an event is in, and its subject.
//! - [`policy`]: a user's policy, the policy events and the revocations, read from the log.
//! - [`process`]: logging and the stop signal, the same in every binary.
//! - [`read_model`]: the projections, where their models live, how far each has applied.
//! - [`settings`]: where every process reads and writes (flags and environment), opened.
//! - [`tls`]: Redis and NATS clients, over TLS to a private CA when configured.
//! - [`MIGRATOR`]: the schema, owned by `events/migrations`.

pub mod database;
pub mod event_log;
pub mod leader;
pub mod lease;
pub mod nats;
pub mod outbox;
pub mod partitions;
pub mod policy;
pub mod process;
pub mod read_model;
pub mod settings;
pub mod tls;

/// Every table Keel owns. Run on start by each binary (or `command-api migrate`) when the
/// schema is behind; safe to run concurrently.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
