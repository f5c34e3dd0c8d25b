//! Every error the server sends is JSON: `{"error": "..."}` with a fitting
//! status. [`json_errors`] also rewrites the few plain-text responses axum
//! makes on its own (405, a body it could not read) into that shape.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// An error answer: status and one-line message.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds for `Retry-After` (503 only).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A library error from a request, its status chosen by its kind
    /// ([`crate::error::ErrorKind`]): input 400, missing 404, out of memory
    /// 503, interrupted 499 (the client went away), internal 500. A model
    /// file's fault is the server's, not the client's: 500.
    /// `render_is_input`: whether a `Render` error means a malformed grid (it
    /// does on `/api/render`).
    pub(crate) fn from_lensmap(err: crate::Error, render_is_input: bool) -> Self {
        use crate::error::ErrorKind;
        let status = match err.kind() {
            _ if render_is_input && matches!(err, crate::Error::Render(_)) => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::UserInput => StatusCode::BAD_REQUEST,
            ErrorKind::BadModel => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::MissingResource => StatusCode::NOT_FOUND,
            ErrorKind::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            // nginx's "client closed request": nobody reads it, logs do.
            ErrorKind::Interrupted => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.message())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message }).to_string();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Middleware (`from_fn`): turn any non-JSON 4xx/5xx into `{"error": ...}`,
/// keeping its status and headers.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&resp) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 16 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    let message = match status {
        // axum adds `Allow` after this layer has run.
        StatusCode::METHOD_NOT_ALLOWED => format!("method `{method}` is not allowed on `{path}`"),
        StatusCode::PAYLOAD_TOO_LARGE => format!("request body too large: {text}"),
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        _ => text.to_string(),
    };
    let body = serde_json::json!({ "error": message }).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// One error of each kind gets the status `README.md` ("Exit codes") gives it.
    #[test]
    fn status_by_kind() {
        let status = |e: Error| ApiError::from_lensmap(e, false).status.as_u16();
        assert_eq!(status(Error::InvalidOption("bad".into())), 400);
        assert_eq!(status(Error::ModelNotFound("/nowhere/m.gguf".into())), 404);
        let oom = Error::OutOfMemory {
            model: "m".into(),
            precision: "f32",
            needed: "2 GiB".into(),
            available: "1 GiB".into(),
            limit: "`MemAvailable`",
        };
        assert_eq!(status(oom), 503);
        assert_eq!(status(Error::Cancelled), 499);
        assert_eq!(status(Error::Internal("boom".into())), 500);
        // The server's own model file is not the client's fault.
        let bad = Error::NonFinite {
            what: "row 3".into(),
            value: f64::NAN,
        };
        assert_eq!(status(bad), 500);
        // A malformed grid sent to `/api/render` is.
        let render = ApiError::from_lensmap(Error::Render("no rows".into()), true);
        assert_eq!(render.status, StatusCode::BAD_REQUEST);
    }
}
