//! `JsonBody<T>`: the JSON request body, strictly: `application/json` only (415), at
//! most 64 KiB (413), and every parse or type error answered 422 naming its field.
//!
//! A body whose declared `Content-Length` is over the limit is refused (413) before
//! anything reads it, on every endpoint of the public listener
//! ([`refuse_declared_oversize`]); the internal one cuts a body at the limit as it reads.
//!
//! Unknown fields are rejected (each request type denies them), so a misspelt optional
//! field cannot silently do nothing. Duplicate keys, nesting deeper than 128 levels,
//! lone surrogate escapes and raw control characters are refused by the parser.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// The `field` of an error about the document as a whole (malformed JSON, duplicate
/// keys, not an object): `$`, the JSON root, so it never reads as a field named `body`.
pub const DOCUMENT: &str = "$";

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A parsed JSON body, with its raw bytes (idempotency keys hash them).
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let raw = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    ApiError::invalid(vec![FieldError::new(DOCUMENT, "could not be read")])
                }
            })?;
        let value = parse(&raw)?;
        Ok(Self { value, raw })
    }
}

/// 413 at once for a request that declares a body longer than [`MAX_BODY_BYTES`]: not a
/// byte of it is read. (A body without a declared length is cut at the limit as it is
/// read, by `DefaultBodyLimit`.)
pub async fn refuse_declared_oversize(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
        .into_response();
    }
    next.run(request).await
}

/// Parses a JSON object into `T`, naming the failing field by its path. Only an object
/// is accepted: serde would otherwise also read a struct from an array.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(vec![FieldError::new(
            DOCUMENT,
            "must be a JSON object",
        )]));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." {
            DOCUMENT.to_owned()
        } else {
            path
        };
        ApiError::invalid(vec![FieldError::new(field, error.inner().to_string())])
    })?;
    deserializer
        .end()
        .map_err(|error| ApiError::invalid(vec![FieldError::new(DOCUMENT, error.to_string())]))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Named {
        name: String,
        age: Option<u32>,
    }

    fn field_of(raw: &str) -> String {
        match parse::<Named>(raw.as_bytes()) {
            Err(ApiError::Invalid { errors, .. }) => errors[0].field.clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"name": 1}"#), "name");
        assert_eq!(field_of(r#"{"name": "a", "age": "x"}"#), "age");
        assert_eq!(field_of(r#"{"name": "a", "nick": "b"}"#), "nick");
        assert_eq!(field_of(r#"{"name": "a", "name": "b"}"#), "$");
        assert_eq!(field_of(r#"{"name": "\ud800"}"#), "name");
        assert_eq!(field_of(r#"{"name": "a"} trailing"#), "$");
        assert_eq!(field_of(r#"["a", 1]"#), "$");
        assert!(matches!(
            parse::<Named>("[".repeat(10_000).as_bytes()),
            Err(ApiError::Invalid { .. })
        ));
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
