//! Partitions of the event stream (`KEEL_PARTITIONS`, P): how events are spread so that
//! N instances of a consumer can share the work, each owning some partitions
//! ([`crate::lease`]).
//!
//! An event's partition is `fnv1a64(stream id) mod P`: the 64-bit FNV-1a hash of the UTF-8
//! bytes of its stream id as written in the log and the CloudEvent's `subject`
//! (`post-0190c6f1-…`), taken modulo P. Every event of one stream lands in one partition,
//! so one owner applies a stream's events in order. The hash is fixed: it never depends on
//! the process, the platform or the Rust version (unlike `std`'s hasher).
//!
//! With P = 1 events go to `<prefix>.<type>` as they always have. With P > 1 the partition
//! is the subject's last token, `<prefix>.<type>.<p>` (every type has two tokens, e.g.
//! `user.updated`), so `<prefix>.user.>` still selects a kind and `<prefix>.*.*.<p>` one
//! partition. P is fixed for the stream's life: it is recorded in the stream's
//! description (`keel partitions=P`) and every process checks it at start.

use std::fmt;
use std::str::FromStr;

/// The most partitions a stream may have: each is a durable consumer per projection and
/// one for the relay, which the NATS permissions name one by one
/// (`scripts/services.sh`), and more partitions than instances' cores buy nothing.
pub const MAX: u32 = 64;

/// How many partitions the stream has: 1 to [`MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u32);

/// What the description of a stream with `P` partitions starts with.
const DESCRIPTION: &str = "keel partitions=";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a number of partitions from 1 to {MAX}")]
pub struct InvalidPartitions(String);

impl Partitions {
    /// One partition: the stream as it was before partitions.
    pub const ONE: Partitions = Partitions(1);

    pub fn new(count: u32) -> Result<Self, InvalidPartitions> {
        if (1..=MAX).contains(&count) {
            Ok(Self(count))
        } else {
            Err(InvalidPartitions(count.to_string()))
        }
    }

    pub fn count(self) -> u32 {
        self.0
    }

    /// The partition of every event of `stream_id`.
    pub fn of(self, stream_id: &str) -> u32 {
        (fnv1a64(stream_id.as_bytes()) % u64::from(self.0)) as u32
    }

    /// The subject an event of `event_type` in `stream_id` is published on (the stream
    /// id is written out only when there are several partitions).
    pub fn subject(self, prefix: &str, event_type: &str, stream_id: impl fmt::Display) -> String {
        if self.0 == 1 {
            format!("{prefix}.{event_type}")
        } else {
            format!("{prefix}.{event_type}.{}", self.of(&stream_id.to_string()))
        }
    }

    /// What a consumer of `partition` filters on: every event when there is one
    /// partition, else every event of that partition.
    pub fn filter(self, prefix: &str, partition: u32) -> String {
        if self.0 == 1 {
            format!("{prefix}.>")
        } else {
            format!("{prefix}.*.*.{partition}")
        }
    }

    /// The partition a message's subject names (`None`: it names none, P = 1).
    pub fn of_subject(self, subject: &str) -> Option<u32> {
        if self.0 == 1 {
            return None;
        }
        subject.rsplit_once('.')?.1.parse().ok()
    }

    /// The stream description that records P.
    pub fn description(self) -> String {
        format!("{DESCRIPTION}{}", self.0)
    }

    /// The P a stream's description records; a stream without one (made before
    /// partitions) has one.
    pub fn recorded(description: Option<&str>) -> Result<Self, InvalidPartitions> {
        match description.and_then(|d| d.strip_prefix(DESCRIPTION)) {
            None => Ok(Self::ONE),
            Some(count) => count.parse(),
        }
    }
}

impl Default for Partitions {
    fn default() -> Self {
        Self::ONE
    }
}

impl fmt::Display for Partitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Partitions {
    type Err = InvalidPartitions;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let count = text
            .trim()
            .parse::<u32>()
            .map_err(|_| InvalidPartitions(text.to_owned()))?;
        Self::new(count)
    }
}

/// FNV-1a, 64 bits (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_64() {
        // The published test vectors of FNV-1a 64.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_stream_always_lands_in_the_same_partition() {
        let p = Partitions::new(8).unwrap();
        let stream = "post-0190c6f1-8d7a-7c2e-9d3b-5a1f0e2d4c6b";
        assert_eq!(p.of(stream), (fnv1a64(stream.as_bytes()) % 8) as u32);
        assert_eq!(p.of(stream), p.of(stream));
        assert!(p.of(stream) < 8);
    }

    #[test]
    fn subjects_carry_the_partition_only_when_there_are_several() {
        let stream = "user-0190c6f1-8d7a-7c2e-9d3b-5a1f0e2d4c6b";
        assert_eq!(
            Partitions::ONE.subject("events", "user.updated", stream),
            "events.user.updated"
        );
        let p = Partitions::new(4).unwrap();
        let subject = p.subject("events", "user.updated", stream);
        assert_eq!(subject, format!("events.user.updated.{}", p.of(stream)));
        assert_eq!(p.of_subject(&subject), Some(p.of(stream)));
        assert_eq!(Partitions::ONE.of_subject("events.user.updated"), None);
        assert_eq!(p.filter("events", 3), "events.*.*.3");
        assert_eq!(Partitions::ONE.filter("events", 0), "events.>");
    }

    #[test]
    fn the_count_is_recorded_in_the_description() {
        let p = Partitions::new(16).unwrap();
        assert_eq!(Partitions::recorded(Some(&p.description())), Ok(p));
        assert_eq!(Partitions::recorded(None), Ok(Partitions::ONE));
        assert_eq!(
            Partitions::recorded(Some("made by hand")),
            Ok(Partitions::ONE)
        );
    }

    #[test]
    fn only_1_to_64_partitions_parse() {
        assert_eq!("8".parse(), Ok(Partitions(8)));
        assert_eq!("64".parse(), Ok(Partitions(64)));
        assert!("0".parse::<Partitions>().is_err());
        assert!("65".parse::<Partitions>().is_err());
        assert!("eight".parse::<Partitions>().is_err());
    }
}
