//! The REST API: GoFD's `/api/v1/server/tasks` contract on the wire, plus
//! Pollen's additions (task list, reports, public key, bearer tokens,
//! `/metrics`, `/healthz`).
//!
//! | route | auth | answers |
//! | --- | --- | --- |
//! | `POST /api/v1/server/tasks` | user | 202 [`TaskInfo`]; 400 `TASK_EXISTED`, `FILE_NOT_EXISTED`, `BAD_REQUEST` |
//! | `GET /api/v1/server/tasks` | user | 200 [`TaskList`] |
//! | `GET /api/v1/server/tasks/{id}` | user | 200 [`TaskInfo`]; 400 `TASK_NOT_EXISTED` |
//! | `DELETE /api/v1/server/tasks/{id}` | user | 202 [`TaskInfo`]; 400 `TASK_NOT_EXISTED` |
//! | `POST /api/v1/server/token` | basic | 200 [`TokenResponse`] |
//! | `GET /metrics` | user | 200 Prometheus text |
//! | `GET /api/v1/server/pubkey` | none | 200 PEM |
//! | `POST /api/v1/server/reports` | task token | 204; 401; 410 |
//! | `GET /healthz` | none | 200 |
//!
//! "user" is HTTP basic auth or a bearer token from `/api/v1/server/token`.
//!
//! [`TaskInfo`]: pollen_protocol::api::TaskInfo
//! [`TaskList`]: pollen_protocol::api::TaskList
//! [`TokenResponse`]: pollen_protocol::api::TokenResponse

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use pollen_protocol::api::{CreateTaskRequest, ProgressReport, TaskInfo, TaskList, TokenResponse};

use crate::api_error::{kind, ApiError, ApiJson};
use crate::auth::{self, AuthMethod, Authenticator};
use crate::metrics::Metrics;
use crate::task_manager::TaskManager;

/// Largest `POST /api/v1/server/tasks` body (long `dispatchFiles` lists).
pub const MAX_CREATE_BODY: usize = 16 * 1024 * 1024;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub manager: TaskManager,
    pub auth: Arc<Authenticator>,
    /// The server's public key, SPKI PEM.
    pub public_pem: Arc<str>,
}

/// The whole REST API.
pub fn router(state: AppState) -> Router {
    let user = Router::new()
        .route(
            "/api/v1/server/tasks",
            post(create_task)
                .layer(DefaultBodyLimit::max(MAX_CREATE_BODY))
                .get(list_tasks),
        )
        .route(
            "/api/v1/server/tasks/{id}",
            get(get_task).delete(delete_task),
        )
        .route("/api/v1/server/token", post(issue_token))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require_user,
        ));
    let open = Router::new()
        .route("/api/v1/server/pubkey", get(pubkey))
        .route("/api/v1/server/reports", post(report))
        .route("/healthz", get(healthz));
    user.merge(open)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn create_task(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<TaskInfo>), ApiError> {
    let info = s.manager.create(req).await?;
    Ok((StatusCode::ACCEPTED, Json(info)))
}

async fn list_tasks(State(s): State<AppState>) -> Json<TaskList> {
    Json(s.manager.list())
}

async fn get_task(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskInfo>, ApiError> {
    Ok(Json(s.manager.get(&id)?))
}

async fn delete_task(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TaskInfo>), ApiError> {
    s.manager.cancel(&id)?;
    Ok((StatusCode::ACCEPTED, Json(s.manager.get(&id)?)))
}

async fn issue_token(
    State(s): State<AppState>,
    Extension(method): Extension<AuthMethod>,
) -> Result<Json<TokenResponse>, ApiError> {
    if method != AuthMethod::Basic {
        return Err(ApiError::unauthorized_basic(
            "a token can only be issued against basic credentials",
        ));
    }
    Ok(Json(s.auth.issue_token()?))
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.manager.render_metrics(),
    )
        .into_response()
}

async fn pubkey(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        s.public_pem.to_string(),
    )
        .into_response()
}

/// Token first, then the body: an unauthenticated sender learns nothing
/// about what a valid report looks like.
async fn report(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let token = auth::bearer_token(&headers);
    let result = s.manager.verify_report_token(token).and_then(|claims| {
        let ApiJson(report) = parse_json::<ProgressReport>(&body)?;
        s.manager.report(&claims, report)
    });
    if result.is_err() {
        Metrics::inc(&s.manager.metrics().reports_rejected);
    } else {
        Metrics::inc(&s.manager.metrics().reports_received);
    }
    result.map(|()| StatusCode::NO_CONTENT)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<ApiJson<T>, ApiError> {
    match Json::<T>::from_bytes(body) {
        Ok(Json(v)) => Ok(ApiJson(v)),
        Err(e) => Err(ApiError::bad_request(format!(
            "invalid JSON body: {}",
            e.body_text()
        ))),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, kind::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        kind::METHOD_NOT_ALLOWED,
        "method not allowed on this endpoint",
    )
}
