//! The one error type of the REST API, and the JSON extractor whose
//! rejections use it.
//!
//! Every error answer is an [`ErrorBody`] with a stable machine-readable
//! `kind` (GoFD's `TASK_EXISTED`, `TASK_NOT_EXISTED`, `FILE_NOT_EXISTED`, and
//! Pollen's own), so clients never parse messages. A 5xx keeps its cause off
//! the wire: the cause is logged once, when the response is built.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pollen_protocol::api::ErrorBody;
use serde::de::DeserializeOwned;

/// Stable error kinds on the wire.
pub mod kind {
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const METHOD_NOT_ALLOWED: &str = "METHOD_NOT_ALLOWED";
    pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
    pub const TASK_EXISTED: &str = "TASK_EXISTED";
    pub const TASK_NOT_EXISTED: &str = "TASK_NOT_EXISTED";
    pub const TASK_CANCELED: &str = "TASK_CANCELED";
    pub const TASK_FINISHED: &str = "TASK_FINISHED";
    pub const FILE_NOT_EXISTED: &str = "FILE_NOT_EXISTED";
    pub const TOO_MANY_TASKS: &str = "TOO_MANY_TASKS";
    pub const INTERNAL: &str = "INTERNAL";
}

/// Which `WWW-Authenticate` challenge a 401 carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer,
}

/// A REST error: status, kind and message, rendered as [`ErrorBody`] JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    challenge: Option<Challenge>,
}

impl ApiError {
    /// Any status and kind.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            challenge: None,
        }
    }

    /// 400 `BAD_REQUEST`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind::BAD_REQUEST, message)
    }

    /// 400 `TASK_EXISTED`: the id is taken by a task with another body.
    pub fn task_existed(id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            kind::TASK_EXISTED,
            format!("task {id:?} already exists with a different request"),
        )
    }

    /// 400 `TASK_NOT_EXISTED` (GoFD answers unknown ids with 400, not 404).
    pub fn task_not_existed(id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            kind::TASK_NOT_EXISTED,
            format!("task {id:?} does not exist"),
        )
    }

    /// 400 `FILE_NOT_EXISTED`.
    pub fn file_not_existed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind::FILE_NOT_EXISTED, message)
    }

    /// 401 with `WWW-Authenticate: Basic realm="pollen"`.
    pub fn unauthorized_basic(message: impl Into<String>) -> Self {
        Self {
            challenge: Some(Challenge::Basic),
            ..Self::new(StatusCode::UNAUTHORIZED, kind::UNAUTHORIZED, message)
        }
    }

    /// 401 with `WWW-Authenticate: Bearer` (task tokens on reports).
    pub fn unauthorized_bearer(message: impl Into<String>) -> Self {
        Self {
            challenge: Some(Challenge::Bearer),
            ..Self::new(StatusCode::UNAUTHORIZED, kind::UNAUTHORIZED, message)
        }
    }

    /// 410 with `kind`: the agent must stop working on the task.
    pub fn gone(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, kind, message)
    }

    /// 500: `cause` is logged when the response is built and never sent.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            kind::INTERNAL,
            cause.to_string(),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The human-readable message (for a 5xx, the internal cause).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), kind = self.kind, error = %self.message, "request failed");
            "internal server error; see the server log".to_owned()
        } else {
            self.message
        };
        let mut resp = (
            self.status,
            Json(ErrorBody {
                kind: self.kind.to_owned(),
                message,
            }),
        )
            .into_response();
        if let Some(c) = self.challenge {
            let value = match c {
                Challenge::Basic => HeaderValue::from_static("Basic realm=\"pollen\""),
                Challenge::Bearer => HeaderValue::from_static("Bearer"),
            };
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}

/// A JSON body extractor whose every rejection is an [`ApiError`].
///
/// The `Content-Type` header is not required: GoFD's documented calls are
/// `curl -d '{…}'`, which sends `application/x-www-form-urlencoded`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                kind::PAYLOAD_TOO_LARGE
            } else {
                kind::BAD_REQUEST
            };
            ApiError::new(status, kind, e.body_text())
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request(
                "request body is empty; expected a JSON object",
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(Self(v)),
            Err(e) => Err(json_rejection(&e)),
        }
    }
}

fn json_rejection(e: &JsonRejection) -> ApiError {
    // `body_text` names the problem: "missing field `id` at line 1 column 2",
    // "unknown field `ids`, expected one of …", "invalid type: …".
    ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(e: ApiError) -> (StatusCode, Option<HeaderValue>, ErrorBody) {
        let r = e.into_response();
        let status = r.status();
        let www = r.headers().get(header::WWW_AUTHENTICATE).cloned();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, www, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_stay_off_the_wire() {
        let (status, _, body) = body_of(ApiError::internal("disk /secret/path exploded")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body.kind, "INTERNAL");
        assert!(!body.message.contains("secret"));
    }

    #[tokio::test]
    async fn unauthorized_carries_a_challenge() {
        let (status, www, body) = body_of(ApiError::unauthorized_basic("no")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(www
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"pollen\""));
        assert_eq!(body.kind, "UNAUTHORIZED");
        let (_, www, _) = body_of(ApiError::unauthorized_bearer("no")).await;
        assert_eq!(www.unwrap(), "Bearer");
    }
}
