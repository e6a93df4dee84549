//! Identity and ordering newtypes: parsed once at the edge, trusted inside.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A user, as identified by the identity provider's `sub`.
    UserId
);
uuid_id!(
    /// A blog post.
    PostId
);
uuid_id!(
    /// A comment on a post.
    CommentId
);
uuid_id!(
    /// One event in the log (also its CloudEvent `id` and `Nats-Msg-Id`).
    EventId
);
uuid_id!(
    /// A token named by its `jti`, as the log knows it: see [`TokenId::of_jti`].
    TokenId
);

impl TokenId {
    /// Namespace of token ids (a v5 UUID of the `jti`).
    const NAMESPACE: Uuid = Uuid::from_u128(0x6b65_656c_2d74_6f6b_656e_2d6a_7469_0001);

    /// The stream id of the token whose `jti` is `jti`: the same jti always names the
    /// same stream, so revoking a token twice finds the first revocation.
    pub fn of_jti(jti: &str) -> Self {
        Self(Uuid::new_v5(&Self::NAMESPACE, jti.as_bytes()))
    }
}

/// The kinds of aggregate whose streams live in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggregateKind {
    User,
    Post,
    /// A token revoked by its `jti` (`token.revoked`).
    Token,
}

impl AggregateKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Post => "post",
            Self::Token => "token",
        }
    }
}

/// A stream of one aggregate: `user-<uuid>`, `post-<uuid>` or `token-<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId {
    kind: AggregateKind,
    id: Uuid,
}

impl StreamId {
    pub fn user(id: UserId) -> Self {
        Self {
            kind: AggregateKind::User,
            id: id.0,
        }
    }

    pub fn post(id: PostId) -> Self {
        Self {
            kind: AggregateKind::Post,
            id: id.0,
        }
    }

    pub fn token(id: TokenId) -> Self {
        Self {
            kind: AggregateKind::Token,
            id: id.0,
        }
    }

    pub fn kind(&self) -> AggregateKind {
        self.kind
    }

    /// The aggregate's own id.
    pub fn aggregate_id(&self) -> Uuid {
        self.id
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.kind().prefix(), self.id)
    }
}

/// A string that is not `user-<uuid>` or `post-<uuid>`.
#[derive(Debug, thiserror::Error)]
#[error("not a stream id (expected user-<uuid>, post-<uuid> or token-<uuid>)")]
pub struct InvalidStreamId;

impl std::str::FromStr for StreamId {
    type Err = InvalidStreamId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (prefix, id) = s.split_once('-').ok_or(InvalidStreamId)?;
        let id = Uuid::parse_str(id).map_err(|_| InvalidStreamId)?;
        let stream = match prefix {
            "user" => Self::user(UserId(id)),
            "post" => Self::post(PostId(id)),
            "token" => Self::token(TokenId(id)),
            _ => return Err(InvalidStreamId),
        };
        // One spelling per stream: the canonical, lowercase, hyphenated one.
        if stream.to_string() == s {
            Ok(stream)
        } else {
            Err(InvalidStreamId)
        }
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StreamId> for String {
    fn from(s: StreamId) -> Self {
        s.to_string()
    }
}

macro_rules! ordinal {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl From<i64> for $name {
            fn from(n: i64) -> Self {
                Self(n)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

ordinal!(
    /// A stream's version: the number of events in it (0 = the stream does not exist).
    Version
);
ordinal!(
    /// An event's place in the global log (0 = before the first event).
    Position
);

impl Version {
    pub const NONE: Version = Version(0);

    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_round_trip_through_text() {
        let user = StreamId::user(UserId::new());
        assert_eq!(user.to_string().parse::<StreamId>().unwrap(), user);
        let post = StreamId::post(PostId::new());
        assert_eq!(post.to_string().parse::<StreamId>().unwrap(), post);
    }

    #[test]
    fn malformed_stream_ids_are_refused() {
        for bad in [
            "",
            "user",
            "user-",
            "order-0190c2a0-0000-7000-8000-000000000000",
            "user-0190c2a000007000800000000000000",
            "user-0190c2a0000070008000000000000000",
            "user-{0190c2a0-0000-7000-8000-000000000000}",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?} was accepted");
        }
    }
}
