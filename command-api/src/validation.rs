//! Collecting field errors into one 422, parsing ids from paths, and checking Keel's
//! request headers on every endpoint.

use axum::extract::{FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use domain::Invalid;

use crate::commands::{idempotency_key_text, if_match};
use crate::consistency::MinPosition;
use crate::error::{ApiError, FieldError};

/// The field errors of one request.
#[derive(Default)]
pub struct Fields(Vec<FieldError>);

impl Fields {
    /// Keeps the value, or records why `field` was refused.
    pub fn check<T>(&mut self, field: &str, parsed: Result<T, Invalid>) -> Option<T> {
        parsed
            .map_err(|Invalid(message)| self.add(field, &message))
            .ok()
    }

    /// Like [`Fields::check`] for a field that may be absent (`None` stays `None`).
    pub fn check_optional<T>(
        &mut self,
        field: &str,
        raw: Option<&str>,
        parse: impl FnOnce(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        raw.and_then(|raw| self.check(field, parse(raw)))
    }

    pub fn add(&mut self, field: &str, message: &str) {
        self.0.push(FieldError::new(field, message));
    }

    /// `Ok` when no field was refused.
    pub fn ok(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }

    pub fn into_error(self) -> ApiError {
        ApiError::invalid(self.0)
    }
}

/// A path parameter, as text; one that is not UTF-8 (`%FF`) names nothing (404), never
/// the framework's plain-text 400.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(text)| Self(text))
            .map_err(|_| ApiError::NotFound("no such resource".to_owned()))
    }
}

/// An id from the path; one that does not parse names no resource (404). Its UUID must
/// be in the hyphenated form (`{…}`, `urn:uuid:` and 32-hex forms name nothing), after
/// an optional lowercase `<kind>-` prefix (stream ids).
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    let not_found = || ApiError::NotFound(format!("no such {what}"));
    let Some((prefix, uuid)) = raw.split_at_checked(raw.len().saturating_sub(36)) else {
        return Err(not_found());
    };
    let prefix_ok = prefix.is_empty()
        || prefix
            .strip_suffix('-')
            .is_some_and(|kind| !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase()));
    if !(prefix_ok && is_hyphenated_uuid(uuid)) {
        return Err(not_found());
    }
    raw.parse().map_err(|_| not_found())
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hex digits in either case.
fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Refuses (422) a request whose `If-Match`, `Idempotency-Key` or `X-Min-Position` is
/// malformed, on every endpoint, before its handler runs.
pub async fn check_headers(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let checked = if_match(headers)
        .and(idempotency_key_text(headers))
        .and(MinPosition::from_headers(headers));
    match checked {
        Ok(_) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(raw: &str) -> bool {
        parse_id::<domain::ids::UserId>(raw, "user").is_ok()
    }

    #[test]
    fn only_hyphenated_uuids_name_a_resource() {
        let id = "6f1c2a3e-9b4d-4c2a-8e1f-0a1b2c3d4e5f";
        assert!(found(id));
        assert!(found(&id.to_uppercase()));
        assert!(!found(&format!("{{{id}}}")));
        assert!(!found(&format!("urn:uuid:{id}")));
        assert!(!found(&id.replace('-', "")));
        assert!(!found(&format!(" {id}")));
        let stream = format!("post-{id}");
        assert!(parse_id::<domain::ids::StreamId>(&stream, "stream").is_ok());
        for bad in [
            format!("post-{{{id}}}"),
            format!("post-{}", id.replace('-', "")),
        ] {
            assert!(
                parse_id::<domain::ids::StreamId>(&bad, "stream").is_err(),
                "{bad}"
            );
        }
    }
}
