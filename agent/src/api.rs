//! The agent's management API (axum), as in the integration contract.
//!
//! * `POST /api/v1/agent/tasks`: push an [`AgentTask`]; 202, or 400
//!   `BAD_REQUEST`, 409 `TASK_CONFLICT`, 503 `TOO_MANY_TASKS`.
//! * `DELETE /api/v1/agent/tasks/{id}`: stop and clean up; always 202.
//! * `GET /api/v1/agent/tasks/{id}`: the latest `ProgressReport`, or 404
//!   `TASK_NOT_EXISTED`.
//! * `GET /healthz`: 200, no auth.
//!
//! Every task route needs a server-signed command token bound to the agent
//! IP, the method, the raw path and a hash of the body; without one the
//! answer is 401 with `WWW-Authenticate: Bearer`. Every error, bad JSON
//! included, is an [`ErrorBody`] with a stable `kind`: the body is taken as
//! raw bytes (it must be hashed anyway) and parsed here, so no extractor
//! rejection escapes as plain text.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pollen_protocol::api::{AgentTask, ErrorBody};
use pollen_protocol::token::{CommandClaims, AUD_AGENT};
use pollen_protocol::{Info, TaskId};

use crate::agent::{AddError, Agent};
use crate::store::check_dest_dir;

/// Largest accepted request body (a metainfo of the maximum piece count).
pub(crate) const MAX_BODY: usize = 40 * 1024 * 1024;

/// An API error: status, stable kind, message.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }

    fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            kind: self.kind.to_owned(),
            message: self.message,
        });
        if self.status == StatusCode::UNAUTHORIZED {
            (self.status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// The management API router.
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/agent/tasks", post(create_task))
        .route(
            "/api/v1/agent/tasks/{id}",
            get(get_task).delete(delete_task),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(agent)
}

/// Checks the command token of a request.
fn authorize(
    agent: &Agent,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("expected a bearer token"))?;
    let claims: CommandClaims = agent
        .verifier
        .verify(token.trim(), AUD_AGENT)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    claims
        .check(&agent.ip.to_string(), method.as_str(), path, body)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Option<TaskId> {
    id.ok().and_then(|Path(s)| TaskId::new(s).ok())
}

async fn create_task(
    State(agent): State<Arc<Agent>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "BAD_REQUEST", e.body_text()))?;
    authorize(&agent, &method, uri.path(), &headers, &body)?;
    let spec: AgentTask = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    // Only a token for this agent makes a slim push's sources answer, so
    // it is checked before anyone is dialed.
    check_token(&agent, &spec)?;
    let raw = task_info(&agent, &spec).await?;
    let info = check_task(&spec, &raw)?;
    match agent.add_task(spec, info, raw).await {
        Ok(()) => Ok(StatusCode::ACCEPTED),
        Err(AddError::Conflict) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "TASK_CONFLICT",
            "a task with this id (or this info-hash) exists with different content",
        )),
        Err(AddError::TooMany) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_TASKS",
            format!(
                "this agent already runs {} tasks (control.maxActive)",
                agent.max_active
            ),
        )),
        Err(AddError::Storage(e)) => {
            tracing::warn!(error = %e, "cannot create the staging area");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "STORAGE",
                format!("cannot create the staging area: {e}"),
            ))
        }
    }
}

/// The pushed task's bencoded info dictionary: unpacked from the push, or
/// for a slim push (no `info`) taken from a live task with the same
/// info-hash or fetched from the push's `infoFrom` and then the seed.
/// Whatever its origin, [`check_task`] then checks it against the
/// info-hash.
async fn task_info(agent: &Agent, spec: &AgentTask) -> Result<Bytes, ApiError> {
    if !spec.info.is_empty() {
        return spec
            .info_bytes(MAX_BODY)
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(e.to_string()));
    }
    if let Some(t) = agent.task_by_hash(&spec.info_hash) {
        return Ok(t.state.uploader.info().clone());
    }
    agent
        .fetch_info(spec, MAX_BODY)
        .await
        .map(Bytes::from)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "INFO_UNAVAILABLE",
                format!("cannot fetch the metainfo: {e}"),
            )
        })
}

/// Checks a task token: for this info-hash, this task and this agent.
fn check_token(agent: &Agent, spec: &AgentTask) -> Result<(), ApiError> {
    let claims = agent
        .verifier
        .verify_task(&spec.token, &spec.info_hash.to_hex())
        .map_err(|e| ApiError::bad_request(format!("task token: {e}")))?;
    if claims.tid != spec.task_id.as_str() {
        return Err(ApiError::bad_request("task token is for another task"));
    }
    if claims.sub != agent.ip.to_string() {
        return Err(ApiError::bad_request("task token is for another agent"));
    }
    Ok(())
}

/// Checks a pushed task's id, metainfo (`raw`) against its info-hash, and
/// dest_dir (its token is checked first, by [`check_token`]).
fn check_task(spec: &AgentTask, raw: &[u8]) -> Result<Info, ApiError> {
    TaskId::new(spec.task_id.as_str()).map_err(|e| ApiError::bad_request(format!("taskId {e}")))?;
    let (info, hash) =
        Info::from_bencode(raw).map_err(|e| ApiError::bad_request(format!("bad metainfo: {e}")))?;
    if hash != spec.info_hash {
        return Err(ApiError::bad_request(format!(
            "info-hash mismatch: metainfo hashes to {hash}, task says {}",
            spec.info_hash
        )));
    }
    check_dest_dir(spec.dest_dir.as_deref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(info)
}

async fn get_task(
    State(agent): State<Arc<Agent>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&agent, &method, uri.path(), &headers, b"")?;
    let report = path_id(id).and_then(|id| agent.snapshot(&id));
    match report {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "TASK_NOT_EXISTED",
            "no such task on this agent",
        )),
    }
}

async fn delete_task(
    State(agent): State<Arc<Agent>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    authorize(&agent, &method, uri.path(), &headers, b"")?;
    if let Some(id) = path_id(id) {
        agent.remove_task(&id).await;
    }
    Ok(StatusCode::ACCEPTED)
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
