//! WebSocket tickets: a browser trades its JWT (in an ordinary request) for a short,
//! single-use ticket and offers that in the handshake (`ticket.<ticket>`), so no JWT
//! travels in a browser's WebSocket handshake.
//!
//! A ticket is 32 random bytes (base64url). Redis keeps only its SHA-256, for
//! [`TTL_SECS`], holding who minted it (`sub`, `jti`, `iat`, `exp`); the handshake
//! consumes it with one atomic `GETDEL`, so two handshakes can never both use it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use domain::ids::UserId;

/// How long a ticket may wait for its handshake.
pub const TTL_SECS: u64 = 300;
/// Random bytes in a ticket.
const BYTES: usize = 32;

/// What a ticket stands for: the minting token, minus the token itself.
#[derive(Debug, Serialize, Deserialize)]
struct Minted {
    sub: UserId,
    exp: i64,
    iat: Option<i64>,
    jti: Option<String>,
    roles: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket store (Redis) failed")]
    Redis(#[from] redis::RedisError),
    #[error("a stored ticket is not what Keel wrote")]
    Corrupt(#[from] serde_json::Error),
}

pub struct Tickets {
    prefix: String,
    connection: ConnectionManager,
}

impl Tickets {
    pub fn new(client: &redis::Client, stream: &str) -> Result<Self, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        Ok(Self {
            prefix: format!("keel:{stream}:ws-ticket:"),
            connection: ConnectionManager::new_lazy_with_config(client.clone(), config)?,
        })
    }

    fn key(&self, ticket: &str) -> String {
        let digest = Sha256::digest(ticket.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", self.prefix)
    }

    /// A fresh ticket for `principal`'s socket.
    pub async fn mint(&self, principal: &Principal) -> Result<String, TicketError> {
        let mut bytes = [0_u8; BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        let minted = serde_json::to_string(&Minted {
            sub: principal.user_id,
            exp: principal.expires_at,
            iat: principal.issued_at,
            jti: principal.jti.as_deref().map(str::to_owned),
            roles: principal.roles.clone(),
        })?;
        redis::cmd("SET")
            .arg(self.key(&ticket))
            .arg(minted)
            .arg("EX")
            .arg(TTL_SECS)
            .arg("NX")
            .query_async::<()>(&mut self.connection.clone())
            .await?;
        Ok(ticket)
    }

    /// Consumes `ticket`: the principal it was minted for, once; `None` when it is
    /// unknown, used or expired.
    pub async fn redeem(&self, ticket: &str) -> Result<Option<Principal>, TicketError> {
        let stored: Option<String> = redis::cmd("GETDEL")
            .arg(self.key(ticket))
            .query_async(&mut self.connection.clone())
            .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let minted: Minted = serde_json::from_str(&stored)?;
        Ok(Some(Principal {
            user_id: minted.sub,
            roles: minted.roles,
            expires_at: minted.exp,
            issued_at: minted.iat,
            jti: minted.jti.map(Into::into),
            // Filled in when the policy authorizes it.
            registered: false,
            token: crate::auth::BearerToken::none(),
        }))
    }
}
