//! `Query<T>`: the query string, strictly: each parameter at most once, and every error
//! a 422 naming its parameter (never the framework's plain-text 400).

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, FieldError};

/// The `field` of an error about the query string as a whole.
const QUERY: &str = "query";

/// Parsed query parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse(parts.uri.query().unwrap_or_default()).map(Self)
    }
}

/// Parses `query` into `T`, refusing a repeated parameter (`?limit=1&limit=2`).
pub fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let pairs = form_urlencoded::parse(query.as_bytes());
    let mut seen = HashSet::new();
    if let Some((name, _)) = pairs.clone().find(|(name, _)| !seen.insert(name.clone())) {
        return Err(ApiError::invalid(vec![FieldError::new(
            name,
            "must be given at most once",
        )]));
    }
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { QUERY.to_owned() } else { path };
        ApiError::invalid(vec![FieldError::new(field, error.inner().to_string())])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Page {
        limit: Option<u32>,
        cursor: Option<String>,
    }

    fn field_of(query: &str) -> String {
        match parse::<Page>(query) {
            Err(ApiError::Invalid { errors, .. }) => errors[0].field.clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_parameter() {
        assert_eq!(field_of("limit=1&limit=2"), "limit");
        assert_eq!(field_of("cursor=a&limit=x"), "limit");
        assert_eq!(field_of("cursor=a&cursor=b"), "cursor");
        assert!(parse::<Page>("limit=3&other=1").is_ok());
        assert!(parse::<Page>("").is_ok());
    }
}
