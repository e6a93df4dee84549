//! One id per request: the client's `X-Request-Id` when sane, else a fresh one; echoed
//! on the response, recorded on the request's tracing span and in event metadata.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::{PROBLEM_JSON, problem};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Letters, digits, `-`, `_`, `.`, at most 128: anything else is replaced, so a client
/// cannot inject text into logs.
fn is_sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub async fn middleware(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_sane(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        user_id = tracing::field::Empty,
        service = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = async {
        let response = next.run(request).await;
        tracing::info!(
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "handled"
        );
        response
    }
    .instrument(span)
    .await;
    let mut response = as_problem(response);
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// Error responses made by the framework (unknown route, wrong method, body limits…)
/// get the same problem+json body as Keel's own.
fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::NOT_FOUND => "no such resource",
        StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed on this resource",
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large",
        _ => "the request could not be handled",
    };
    let mut replaced = problem(status, detail);
    for name in [header::ALLOW, header::RETRY_AFTER] {
        if let Some(value) = response.headers().get(&name) {
            replaced.headers_mut().insert(name, value.clone());
        }
    }
    replaced
}

#[cfg(test)]
mod tests {
    use super::is_sane;

    #[test]
    fn only_plain_request_ids_are_kept() {
        assert!(is_sane("abc-123_X.y"));
        assert!(!is_sane(""));
        assert!(!is_sane("a b"));
        assert!(!is_sane("a\nb"));
        assert!(!is_sane(&"a".repeat(129)));
    }
}
