//! The catalogue: dataset registration, search, metadata edits and versions.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use gdx_catalog::{
    Classification, Dataset, DatasetPatch, DatasetQuery, DatasetStatus, NewDataset, Page, SharingType, Version,
};
use gdx_policies::Access;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Json, PageParams, Query, page_request};
use crate::state::AppState;

/// A catalogue entry as a caller sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatasetView {
    /// The catalogue metadata.
    #[serde(flatten)]
    pub dataset: Dataset,
    /// What the caller may do with its data.
    pub access: Access,
}

fn view(state: &AppState, caller: &Caller, dataset: Dataset) -> DatasetView {
    DatasetView { access: state.data.access(&caller.principal, &dataset), dataset }
}

/// Registers a dataset (a steward of the provider department, or an admin).
#[utoipa::path(operation_id = "create_dataset", post, path = "/api/v1/datasets", tag = "catalogue", request_body = NewDataset,
    responses(
        (status = 201, description = "Created", body = DatasetView),
        (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(input): Json<NewDataset>,
) -> ApiResult<(StatusCode, axum::Json<DatasetView>)> {
    // The route decision was deferred until the provider department is known.
    caller.require(&state, &Method::POST, input.department.as_deref().unwrap_or(""))?;
    let d = state.catalog.create_dataset(input, &caller.principal.id).await?;
    caller.audit.note(|n| n.datasets = vec![d.id.clone()]);
    tracing::info!(dataset = %d.id, principal = %caller.principal.id, "dataset registered");
    Ok((StatusCode::CREATED, axum::Json(view(&state, &caller, d))))
}

/// Search and filters of the catalogue.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find in titles, descriptions and column titles (Chinese words of two characters and more).
    pub q: Option<String>,
    /// basic|thematic|department.
    pub classification: Option<String>,
    /// Provider department.
    pub department: Option<String>,
    /// unconditional|conditional|none.
    pub sharing: Option<String>,
    /// Open resources only (`true`) or closed only (`false`).
    pub open: Option<bool>,
    /// active (default), retired or all.
    pub status: Option<String>,
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// Searches the catalogue.
#[utoipa::path(operation_id = "search_datasets", get, path = "/api/v1/datasets", tag = "catalogue", params(SearchParams),
    responses(
        (status = 200, description = "OK", body = Page<DatasetView>),
    ))]
pub async fn search(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<SearchParams>,
) -> ApiResult<axum::Json<Page<DatasetView>>> {
    let classification = parse_filter::<Classification>("classification", p.classification)?;
    let sharing = parse_filter::<SharingType>("sharing", p.sharing)?;
    let status = match p.status.as_deref() {
        None | Some("") => Some(DatasetStatus::Active),
        Some("all") => None,
        Some(s) => Some(s.parse::<DatasetStatus>().map_err(|m| ApiError::invalid("status", format!("{m}|all")))?),
    };
    if p.q.as_ref().is_some_and(|q| q.chars().count() > 200) {
        return Err(ApiError::invalid("q", "must be at most 200 characters"));
    }
    let query = DatasetQuery {
        q: p.q.filter(|q| !q.trim().is_empty()),
        classification,
        department: p.department.filter(|d| !d.is_empty()),
        sharing,
        open: p.open,
        status,
    };
    let page = state.catalog.store().search_datasets(query, page_request(p.limit, p.page_token)?).await?;
    Ok(axum::Json(Page {
        items: page.items.into_iter().map(|d| view(&state, &caller, d)).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// An optional filter value of a closed set; empty means absent.
fn parse_filter<T: std::str::FromStr<Err = String>>(field: &str, value: Option<String>) -> ApiResult<Option<T>> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => v.parse().map(Some).map_err(|m| ApiError::invalid(field, m)),
        None => Ok(None),
    }
}

/// One catalogue entry, with the caller's access.
#[utoipa::path(operation_id = "get_dataset", get, path = "/api/v1/datasets/{id}", tag = "catalogue", params(("id" = String, Path, description = "{department}.{name}")),
    responses(
        (status = 200, description = "OK", body = DatasetView),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<DatasetView>> {
    let d = state.catalog.store().dataset(&id).await?;
    Ok(axum::Json(view(&state, &caller, d)))
}

/// Edits metadata, adds nullable columns or retires a dataset (its steward or an admin).
#[utoipa::path(operation_id = "update_dataset", patch, path = "/api/v1/datasets/{id}", tag = "catalogue", params(("id" = String, Path)),
    request_body = DatasetPatch,
    responses(
        (status = 200, description = "OK", body = DatasetView),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(patch): Json<DatasetPatch>,
) -> ApiResult<axum::Json<DatasetView>> {
    let d = state.catalog.update_dataset(&id, patch).await?;
    tracing::info!(dataset = %d.id, principal = %caller.principal.id, status = %d.status, "dataset updated");
    Ok(axum::Json(view(&state, &caller, d)))
}

/// The committed versions of a dataset, newest first.
#[utoipa::path(operation_id = "list_versions", get, path = "/api/v1/datasets/{id}/versions", tag = "catalogue", params(("id" = String, Path), PageParams),
    responses(
        (status = 200, description = "OK", body = Page<Version>),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn versions(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(page): Query<PageParams>,
) -> ApiResult<axum::Json<Page<Version>>> {
    Ok(axum::Json(state.catalog.store().versions(&id, page.request()?).await?))
}
