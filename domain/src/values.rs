//! Validated command inputs: the limits of the contract, checked once at the edge.

use serde::{Deserialize, Serialize};

/// Why a value was refused; the message is safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(message: &str) -> Invalid {
    Invalid(message.to_owned())
}

/// A role Keel records for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// The role named `name`, if Keel records one by that name.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// A set of roles as stored in read models: sorted, without repeats.
    pub fn names(roles: &[Role]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = roles.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// Refuses the characters no text field may hold: NUL (Postgres `jsonb` cannot store
/// it) and, unless `multiline`, every other control character.
fn check_characters(s: &str, multiline: bool) -> Result<(), Invalid> {
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if s.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(())
}

fn bounded(s: &str, max: usize, multiline: bool) -> Result<String, Invalid> {
    check_characters(s, multiline)?;
    let trimmed = s.trim();
    if trimmed.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if trimmed.chars().count() > max {
        return Err(Invalid(format!("must be at most {max} characters")));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $max:expr, $multiline:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(s: &str) -> Result<Self, Invalid> {
                bounded(s, Self::MAX_CHARS, $multiline).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }
    };
}

text_value!(
    /// A display name: 1–100 characters after trimming.
    Name, 100, false
);
text_value!(
    /// A post title: 1–200 characters after trimming.
    Title, 200, false
);
text_value!(
    /// A post body: 1–20000 characters after trimming.
    PostBody, 20000, true
);
text_value!(
    /// A comment: 1–5000 characters after trimming.
    CommentBody, 5000, true
);

/// A token's `jti` as a revocation names it: 1–255 visible ASCII characters, exactly
/// as the token carries it (not trimmed: a `jti` is compared byte for byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jti(String);

impl Jti {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > Self::MAX_CHARS || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid("must be 1 to 255 visible ASCII characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address: at most 254 characters, `local@domain` with a dotted domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_characters(s, false)?;
        let s = s.trim();
        if s.chars().count() > Self::MAX_CHARS {
            return Err(invalid("must be at most 254 characters"));
        }
        let refused = || invalid("must be a valid email address");
        let (local, domain) = s.rsplit_once('@').ok_or_else(refused)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    // `--` in the 3rd and 4th place is reserved for IDN A-labels (RFC 5891).
                    && (l.get(2..4) != Some("--") || l.starts_with("xn--"))
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if local_ok && domain_ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(refused())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse(&"x".repeat(100)).is_ok());
        assert!(Name::parse(&"x".repeat(101)).is_err());
        assert!(
            Name::parse(&"é".repeat(100)).is_ok(),
            "limits count characters"
        );
    }

    #[test]
    fn nul_and_control_characters_are_refused() {
        assert!(Name::parse("a\u{0}b").is_err());
        assert!(Name::parse("a\nb").is_err());
        assert!(PostBody::parse("line\nline\tcol").is_ok());
        assert!(PostBody::parse("a\u{0}b").is_err());
        assert!(Email::parse("a\u{0}@example.com").is_err());
    }

    #[test]
    fn emails_are_checked() {
        for good in ["ada@example.com", "a.b+tag@mail.example.org"] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a..b@example.com",
            "ada@exa mple.com",
            "ada@-example.com",
            "ada@ab--cd.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
        assert_eq!(long.len(), 255);
        assert!(Email::parse(&long).is_err());
    }
}
