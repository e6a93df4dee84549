//! RFC 7662 token introspection and RFC 7009 revocation, for one client authenticated by HTTP Basic.

use std::{convert::Infallible, fmt, str::FromStr, sync::Arc};

use axum::{
    Form, Json,
    extract::{State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{DEFAULT_TOKEN_TYPE, Issuer};

/// The client id the issuer accepts unless configured otherwise.
pub const DEFAULT_CLIENT_ID: &str = "keel";

/// The client secret the issuer accepts unless configured otherwise (a dev value, public).
pub const DEFAULT_CLIENT_SECRET: &str = "keel-dev-introspection-secret";

/// A client secret; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        ClientSecret(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(***)")
    }
}

impl FromStr for ClientSecret {
    type Err = Infallible;

    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        Ok(ClientSecret::new(secret))
    }
}

/// The one OAuth client allowed to introspect and revoke tokens (Keel's command API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    id: String,
    secret: ClientSecret,
}

impl Client {
    pub fn new(id: impl Into<String>, secret: ClientSecret) -> Self {
        Client {
            id: id.into(),
            secret,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret(&self) -> &ClientSecret {
        &self.secret
    }

    /// Whether `headers` carry `Authorization: Basic base64(id:secret)` for this client.
    /// The id and secret are compared as sent (the defaults need no form-encoding), the
    /// secret in time independent of where it differs.
    fn authenticates(&self, headers: &HeaderMap) -> bool {
        let Some((id, secret)) = basic_credentials(headers) else {
            return false;
        };
        id == self.id && same_bytes(secret.as_bytes(), self.secret.expose().as_bytes())
    }
}

impl Default for Client {
    /// [`DEFAULT_CLIENT_ID`] with [`DEFAULT_CLIENT_SECRET`].
    fn default() -> Self {
        Client::new(DEFAULT_CLIENT_ID, ClientSecret::new(DEFAULT_CLIENT_SECRET))
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// State of the two endpoints: the issuer whose tokens they judge and the client they serve.
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) issuer: Arc<Issuer>,
    pub(crate) client: Client,
}

/// The form both endpoints read; other fields (`token_type_hint`) are ignored.
#[derive(Deserialize)]
pub(crate) struct TokenForm {
    token: Option<String>,
}

/// An active token's introspection answer (RFC 7662 §2.2).
#[derive(Serialize)]
struct Active<'a> {
    active: bool,
    sub: &'a str,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a Value>,
    iss: &'a str,
    token_type: &'a str,
    client_id: &'a str,
    scope: &'a str,
}

/// `POST .../token/introspect`: `{"active": true, ...claims}` for an active token of this
/// issuer, `{"active": false}` for any other; 401 `invalid_client` without the client's
/// credentials, 400 `invalid_request` without a `token`. `token_type` is the token's
/// `typ` (`Bearer` for an access token).
pub(crate) async fn introspect(
    State(endpoints): State<Endpoints>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    endpoints.issuer.count_introspection();
    let token = match authorized_token(&endpoints.client, &headers, form) {
        Ok(token) => token,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(claims) = endpoints.issuer.introspect(&token) else {
        return Json(json!({ "active": false })).into_response();
    };
    Json(Active {
        active: true,
        sub: &claims.sub,
        exp: claims.exp,
        iat: claims.iat,
        jti: claims.jti.as_deref(),
        aud: claims.aud.as_ref(),
        iss: &claims.iss,
        token_type: claims.typ.as_deref().unwrap_or(DEFAULT_TOKEN_TYPE),
        client_id: endpoints.client.id(),
        scope: "",
    })
    .into_response()
}

/// `POST .../revoke`: revokes the token's `jti` if this issuer signed it (expired or
/// not) and answers 200 with an empty body, also for a token it does not know (RFC 7009
/// §2.2); 401 `invalid_client` without the client's credentials, 400 `invalid_request`
/// without a `token`.
pub(crate) async fn revoke(
    State(endpoints): State<Endpoints>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let token = match authorized_token(&endpoints.client, &headers, form) {
        Ok(token) => token,
        Err(refusal) => return refusal.into_response(),
    };
    if endpoints.issuer.revoke(&token).is_some() {
        tracing::info!("token revoked");
    }
    StatusCode::OK.into_response()
}

/// Why a request to either endpoint is refused (RFC 6749 §5.2 error responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No, or wrong, client credentials: 401 `invalid_client`.
    InvalidClient,
    /// No `token` in a form body: 400 `invalid_request`.
    InvalidRequest,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::InvalidClient => (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="keel""#),
                )],
                Json(json!({ "error": "invalid_client" })),
            )
                .into_response(),
            Refusal::InvalidRequest => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "invalid_request" })),
            )
                .into_response(),
        }
    }
}

/// The `token` of the form once the client is authenticated.
fn authorized_token(
    client: &Client,
    headers: &HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<String, Refusal> {
    if !client.authenticates(headers) {
        return Err(Refusal::InvalidClient);
    }
    match form {
        Ok(Form(TokenForm { token: Some(token) })) if !token.is_empty() => Ok(token),
        _ => Err(Refusal::InvalidRequest),
    }
}
