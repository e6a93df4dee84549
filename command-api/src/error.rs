//! `ApiError`: every failure of a request, answered as RFC 9457 problem JSON.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use domain::DomainError;
use domain::ids::{Position, Version};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid input, named by its field (a JSON path, or a header name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No credentials at all.
    #[error("send Authorization: Bearer <token>")]
    Unauthenticated,
    /// Credentials that are not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// `/internal/*` without one of the accepted service keys (never a user token).
    #[error("send X-Api-Key or X-Service-Token with a valid service key")]
    ServiceKeyRejected,
    /// Too many failed service-key attempts from the client's address.
    #[error("too many failed service-key attempts from this address; retry later")]
    TooManyKeyFailures { retry_after_secs: u32 },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the resource is at version {current}")]
    PreconditionFailed { current: Version },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("{detail}")]
    Invalid {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("{dependency} is unavailable")]
    Unavailable {
        dependency: &'static str,
        retry_after_secs: u32,
    },
    /// The caller is past one of its own limits (its rate, its sockets).
    #[error("{limit}")]
    TooManyRequests {
        limit: &'static str,
        retry_after_secs: u32,
    },
    /// This instance is at one of its limits (requests in flight, sockets, waiters).
    #[error("{limit}")]
    AtCapacity {
        limit: &'static str,
        retry_after_secs: u32,
    },
    /// `X-Min-Position` was not reached by the read models within the wait bound.
    #[error("the read models have not applied position {position} yet")]
    NotYetApplied {
        position: Position,
        retry_after_secs: u32,
    },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self::Invalid { detail, errors }
    }

    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(error))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::Unauthorized(_) | Self::ServiceKeyRejected => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } | Self::TooManyKeyFailures { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable { .. } | Self::AtCapacity { .. } | Self::NotYetApplied { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Unauthenticated | Self::Unauthorized(_) | Self::ServiceKeyRejected => {
                "unauthorized"
            }
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::PreconditionFailed { .. } => "precondition-failed",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Invalid { .. } => "validation",
            Self::TooManyRequests { .. } | Self::TooManyKeyFailures { .. } => "too-many-requests",
            Self::AtCapacity { .. } => "at-capacity",
            Self::Unavailable { .. } | Self::NotYetApplied { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::NotFound(m) => Self::NotFound(m.to_owned()),
            DomainError::Forbidden(m) => Self::Forbidden(m.to_owned()),
            DomainError::Conflict(m) => Self::Conflict(m.to_owned()),
        }
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_version: Option<Version>,
}

/// A problem response for a status with no more specific story (used for framework
/// rejections such as 405 and unknown routes).
pub fn problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = Problem {
        kind: "about:blank".to_owned(),
        title,
        status: status.as_u16(),
        detail: detail.to_owned(),
        errors: None,
        current_version: None,
    };
    with_problem_type(status, Json(body).into_response())
}

fn with_problem_type(status: StatusCode, mut response: Response) -> Response {
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            // The cause of a 5xx is logged once, never shown.
            Self::Internal(source) => {
                tracing::error!(error = %source, cause = ?source.source(), "request failed");
                "the server failed to handle the request".to_owned()
            }
            other => other.to_string(),
        };
        let body = Problem {
            kind: format!("urn:keel:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            errors: match &self {
                Self::Invalid { errors, .. } => Some(errors),
                _ => None,
            },
            current_version: match &self {
                Self::PreconditionFailed { current } => Some(*current),
                _ => None,
            },
        };
        let mut response = with_problem_type(status, Json(body).into_response());
        let headers = response.headers_mut();
        match &self {
            // RFC 6750 §3.1: no error code when no credentials were sent.
            Self::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::ServiceKeyRejected => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("ApiKey header=\"X-Api-Key\""),
                );
            }
            Self::Unavailable {
                retry_after_secs, ..
            }
            | Self::NotYetApplied {
                retry_after_secs, ..
            }
            | Self::TooManyRequests {
                retry_after_secs, ..
            }
            | Self::AtCapacity {
                retry_after_secs, ..
            }
            | Self::TooManyKeyFailures { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::PreconditionFailed { current } => {
                if let Ok(etag) = HeaderValue::from_str(&format!("\"{current}\"")) {
                    headers.insert(header::ETAG, etag);
                }
            }
            _ => {}
        }
        response
    }
}
