//! `/healthz`, `/metrics` and the OpenAPI document.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

use crate::state::AppState;

/// Body of `/healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok` when the server answers.
    pub status: &'static str,
}

/// Liveness: the server answers.
#[utoipa::path(operation_id = "healthz", get, path = "/healthz", tag = "system", security(()),
    responses(
        (status = 200, description = "The server is up", body = Health),
    ))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Prometheus metrics (admin or auditor).
#[utoipa::path(operation_id = "metrics", get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
    ))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(operation_id = "openapi", get, path = "/api/v1/openapi.json", tag = "system", security(()),
    responses(
        (status = 200, description = "OpenAPI document", content_type = "application/json"),
    ))]
pub async fn openapi() -> impl IntoResponse {
    axum::Json(super::openapi_document())
}
