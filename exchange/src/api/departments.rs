//! Departments: created by administrators, listed by everyone.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gdx_catalog::{Department, NewDepartment, Page};

use super::auth::Caller;
use super::error::{ApiResult, Problem};
use super::extract::{Json, PageParams, Query};
use crate::state::AppState;

/// Registers a department (admin).
#[utoipa::path(operation_id = "create_department", post, path = "/api/v1/departments", tag = "identities", request_body = NewDepartment,
    responses(
        (status = 201, description = "Created", body = Department),
        (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<NewDepartment>,
) -> ApiResult<(StatusCode, axum::Json<Department>)> {
    let d = state.catalog.create_department(input).await?;
    caller.audit.note(|n| n.target = Some(d.id.clone()));
    tracing::info!(department = %d.id, "department created");
    Ok((StatusCode::CREATED, axum::Json(d)))
}

/// Lists departments.
#[utoipa::path(operation_id = "list_departments", get, path = "/api/v1/departments", tag = "identities", params(PageParams),
    responses(
        (status = 200, description = "OK", body = Page<Department>),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Query(page): Query<PageParams>,
) -> ApiResult<axum::Json<Page<Department>>> {
    Ok(axum::Json(state.catalog.store().list_departments(page.request()?).await?))
}

/// One department.
#[utoipa::path(operation_id = "get_department", get, path = "/api/v1/departments/{id}", tag = "identities", params(("id" = String, Path)),
    responses(
        (status = 200, description = "OK", body = Department),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::Json<Department>> {
    Ok(axum::Json(state.catalog.store().department(&id).await?))
}
