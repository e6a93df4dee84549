//! The Token aggregate: an access token revoked by its `jti` before its expiry (the
//! emergency brake for a stolen token). Its stream is `token-<v5 uuid of the jti>`.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Actor, DomainError};
use crate::values::Jti;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TokenEvent {
    #[serde(rename = "token.revoked")]
    Revoked(TokenRevoked),
}

/// From now on the token `jti` is refused, until `expires_at` (its `exp`, Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoked {
    pub jti: String,
    pub expires_at: i64,
}

impl TokenEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            TokenEvent::Revoked(_) => "token.revoked",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenCommand {
    Revoke { jti: Jti, expires_at: i64 },
}

/// A revoked token: until when it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub expires_at: i64,
}

/// Only an admin revokes a token. Revoking it again changes nothing, unless the new
/// expiry is later (the revocation then lasts until it).
pub fn decide(
    state: Option<&Token>,
    actor: &Actor,
    command: &TokenCommand,
) -> Result<Vec<TokenEvent>, DomainError> {
    actor.ensure_not_deactivated()?;
    if !actor.admin {
        return Err(DomainError::Forbidden("only an admin may revoke tokens"));
    }
    match command {
        TokenCommand::Revoke { jti, expires_at } => {
            if state.is_some_and(|token| token.expires_at >= *expires_at) {
                return Ok(vec![]);
            }
            Ok(vec![TokenEvent::Revoked(TokenRevoked {
                jti: jti.as_str().to_owned(),
                expires_at: *expires_at,
            })])
        }
    }
}

pub fn apply(state: &mut Option<Token>, event: &TokenEvent) {
    match event {
        TokenEvent::Revoked(e) => {
            *state = Some(Token {
                expires_at: e.expires_at,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Standing;
    use crate::ids::UserId;

    fn admin() -> Actor {
        Actor {
            id: UserId::new(),
            admin: true,
            standing: Standing::Active,
        }
    }

    fn revoke(expires_at: i64) -> TokenCommand {
        TokenCommand::Revoke {
            jti: Jti::parse("abc-123").unwrap(),
            expires_at,
        }
    }

    #[test]
    fn an_admin_revokes_a_token_until_its_expiry() {
        let events = decide(None, &admin(), &revoke(2_000_000_000));
        assert_eq!(
            events,
            Ok(vec![TokenEvent::Revoked(TokenRevoked {
                jti: "abc-123".into(),
                expires_at: 2_000_000_000
            })])
        );
    }

    #[test]
    fn revoking_again_changes_nothing_unless_it_lasts_longer() {
        let mut state = None;
        apply(
            &mut state,
            &TokenEvent::Revoked(TokenRevoked {
                jti: "abc-123".into(),
                expires_at: 2_000_000_000,
            }),
        );
        assert_eq!(
            decide(state.as_ref(), &admin(), &revoke(2_000_000_000)),
            Ok(vec![])
        );
        assert_eq!(
            decide(state.as_ref(), &admin(), &revoke(2_000_000_100)).map(|events| events.len()),
            Ok(1)
        );
    }

    #[test]
    fn only_an_admin_revokes_a_token() {
        let user = Actor {
            admin: false,
            ..admin()
        };
        assert!(matches!(
            decide(None, &user, &revoke(2_000_000_000)),
            Err(DomainError::Forbidden(_))
        ));
    }
}
