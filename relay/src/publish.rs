//! Publishing one notification: the `notify` crate's publish script (dedup, history and
//! channel in one atomic step), under the name the relay and its tests use.

pub use notify::Publisher as NotificationPublisher;
