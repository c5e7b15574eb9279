//! A dataset's masks and row filters, set by its stewards.

use axum::Extension;
use axum::extract::{Path, State};
use gdx_catalog::FieldError;
use gdx_policies::DatasetPolicy;
use serde::Serialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::Json;
use crate::state::AppState;

/// A dataset's policy, with who set it when.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// The dataset.
    pub dataset: String,
    /// Explicit masks (each replaces the semantic default of its column).
    pub masks: Vec<gdx_policies::plan::MaskRule>,
    /// Row filters (ANDed when several apply).
    pub row_filters: Vec<gdx_policies::plan::FilterRule>,
    /// When it was last set; `null` while the defaults apply.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who set it.
    pub updated_by: Option<String>,
}

fn view(dataset: &str, policy: DatasetPolicy, stored: Option<&gdx_catalog::StoredPolicy>) -> PolicyView {
    PolicyView {
        dataset: dataset.to_string(),
        masks: policy.masks,
        row_filters: policy.row_filters,
        updated_at: stored.map(|s| s.updated_at),
        updated_by: stored.map(|s| s.updated_by.clone()),
    }
}

/// The dataset's masks and row filters (its stewards).
#[utoipa::path(get, operation_id = "get_policy", path = "/api/v1/datasets/{id}/policy", tag = "access",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "OK", body = PolicyView),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<axum::Json<PolicyView>> {
    let stored = state.catalog.store().dataset_policy(&id).await?;
    let policy = match &stored {
        Some(s) => serde_json::from_value(s.doc.clone()).map_err(|e| ApiError::internal(&e))?,
        None => DatasetPolicy::default(),
    };
    Ok(axum::Json(view(&id, policy, stored.as_ref())))
}

/// Replaces the dataset's masks and row filters (its stewards). Takes effect
/// for the next query; `{"masks": [], "row_filters": []}` restores the defaults.
#[utoipa::path(put, operation_id = "set_policy", path = "/api/v1/datasets/{id}/policy", tag = "access",
    params(("id" = String, Path)),
    request_body = DatasetPolicy,
    responses(
        (status = 200, description = "Set", body = PolicyView),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(policy): Json<DatasetPolicy>,
) -> ApiResult<axum::Json<PolicyView>> {
    let dataset = state.catalog.store().dataset(&id).await?;
    let problems = policy.problems(&dataset);
    if !problems.is_empty() {
        return Err(ApiError::validation(problems.into_iter().map(|(f, m)| FieldError::new(f, m)).collect()));
    }
    let doc = serde_json::to_value(&policy).map_err(|e| ApiError::internal(&e))?;
    let stored = state.catalog.store().set_dataset_policy(&id, doc, &caller.principal.id).await?;
    state.data.refresh().await.map_err(|e| ApiError::internal(&e))?;
    tracing::info!(dataset = %id, principal = %caller.principal.id, masks = policy.masks.len(), row_filters = policy.row_filters.len(), "dataset policy set");
    Ok(axum::Json(view(&id, policy, Some(&stored))))
}
