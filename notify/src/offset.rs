//! Offsets (`<epoch>.<entry id>`), the history entry ids inside them, and the frames a
//! socket receives.

use std::fmt;

use redis::{FromRedisValue, ParsingError, Value};

/// The frame a socket receives first when its history no longer covers the offset it
/// asked to resume from.
pub const RECOVERY_INCOMPLETE: &str = r#"{"type":"recovery.incomplete"}"#;

/// A history entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl std::str::FromStr for EntryId {
    type Err = InvalidOffset;
    fn from_str(s: &str) -> Result<Self, InvalidOffset> {
        let (ms, seq) = s.split_once('-').ok_or(InvalidOffset)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| InvalidOffset)?,
            seq: seq.parse().map_err(|_| InvalidOffset)?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Where a user's notifications stand: `<epoch>.<entry id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub epoch: String,
    pub entry: EntryId,
}

/// A string that is not an offset Keel issued.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("not a notification offset")]
pub struct InvalidOffset;

impl std::str::FromStr for Offset {
    type Err = InvalidOffset;
    fn from_str(s: &str) -> Result<Self, InvalidOffset> {
        let (epoch, entry) = s.split_once('.').ok_or(InvalidOffset)?;
        if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(InvalidOffset);
        }
        Ok(Self {
            epoch: epoch.to_owned(),
            entry: entry.parse()?,
        })
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.entry)
    }
}

/// The frame a socket receives: the notification's JSON with `"offset"` put first.
/// The relay's script builds the published message the same way.
pub fn frame(notification_json: &str, offset: &Offset) -> String {
    let rest = notification_json
        .strip_prefix('{')
        .unwrap_or(notification_json);
    format!(r#"{{"offset":"{offset}",{rest}"#)
}

/// The offset the relay's script returns.
impl FromRedisValue for Offset {
    fn from_redis_value(value: Value) -> Result<Self, ParsingError> {
        let text = String::from_redis_value(value)?;
        text.parse()
            .map_err(|_| ParsingError::from(format!("not a notification offset: {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_refuse_what_keel_did_not_issue() {
        let offset: Offset = "a1b2c3.1700000000000-7".parse().expect("an offset");
        assert_eq!(offset.epoch, "a1b2c3");
        assert_eq!(
            offset.entry,
            EntryId {
                ms: 1_700_000_000_000,
                seq: 7
            }
        );
        assert_eq!(offset.to_string(), "a1b2c3.1700000000000-7");
        for bad in [
            "", "a1", ".1-2", "a.1", "a.1-", "a.-1", "a-b.1-2", "a.1-2-3", "a.x-1",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        let parse = |s: &str| s.parse::<EntryId>().expect("an entry id");
        assert!(parse("10-0") < parse("10-1"));
        assert!(parse("9-99") < parse("10-0"));
    }

    #[test]
    fn frames_put_the_offset_first() {
        let offset: Offset = "e.1-0".parse().expect("an offset");
        let frame = frame(r#"{"id":"x","data":{}}"#, &offset);
        assert_eq!(frame, r#"{"offset":"e.1-0","id":"x","data":{}}"#);
        let value: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
        assert_eq!(value["offset"], "e.1-0");
    }

    #[test]
    fn the_scripts_reply_reads_as_an_offset_or_none() {
        let reply = Value::BulkString(b"e1.1700000000000-0".to_vec());
        let offset: Option<Offset> = redis::from_redis_value(reply).expect("an offset");
        assert_eq!(
            offset.map(|o| o.to_string()).as_deref(),
            Some("e1.1700000000000-0")
        );
        let dropped: Option<Offset> = redis::from_redis_value(Value::Nil).expect("nothing");
        assert_eq!(dropped, None);
        assert!(redis::from_redis_value::<Offset>(Value::BulkString(b"x".to_vec())).is_err());
    }
}
