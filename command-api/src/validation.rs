//! Collecting field errors into one 422, and parsing ids from paths.

use events::domain::Invalid;

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

/// An id from the path; one that does not parse names no resource (404).
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no such {what}")))
}
