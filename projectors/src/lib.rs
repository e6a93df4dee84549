//! Keel's projector workers: they consume the JetStream stream that the command API's
//! outbox publisher fills (command -> log -> outbox -> **JetStream -> projectors** ->
//! read models) and build read models from it.
//!
//! - [`tail`]: prints the stream as it arrives (an operator's and the demo's window on
//!   the bus). The read models and their durable consumers come with the projectors issue.

pub mod tail;
