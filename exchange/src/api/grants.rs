//! Grants: what approved sharing requests leave in force. Listed to those
//! concerned, revoked by the provider's stewards (or an administrator);
//! revocation takes effect at once.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use gdx_catalog::{Grant, Role, provider_of};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::Query;
use crate::state::AppState;

/// Filters of the grant list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GrantParams {
    /// Only grants of this dataset.
    pub dataset: Option<String>,
    /// Only grants to this department.
    pub department: Option<String>,
}

/// Grants, newest first, revoked ones included: an administrator sees all; a
/// steward those of its department's datasets and those to its department;
/// anyone else those to its department.
#[utoipa::path(get, operation_id = "list_grants", path = "/api/v1/grants", tag = "access", params(GrantParams),
    responses((status = 200, description = "OK", body = Vec<Grant>)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<GrantParams>,
) -> ApiResult<axum::Json<Vec<Grant>>> {
    let who = &caller.principal;
    let own = who.department.as_deref();
    let grants = state.catalog.store().grants(p.dataset, p.department).await?;
    let visible = grants
        .into_iter()
        .filter(|g| {
            who.has_role(Role::Admin)
                || own == Some(g.department.as_str())
                || (who.has_role(Role::Steward) && own == Some(provider_of(&g.dataset)))
        })
        .collect();
    Ok(axum::Json(visible))
}

/// Revokes a grant (stewards of the providing department, administrators);
/// the department loses what it granted at once. Revoking twice is harmless.
#[utoipa::path(delete, operation_id = "revoke_grant", path = "/api/v1/grants/{id}", tag = "access", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let grant = state.catalog.store().grant(&id).await?;
    caller.audit.note(|n| n.datasets = vec![grant.dataset.clone()]);
    caller.require(&state, &Method::DELETE, provider_of(&grant.dataset))?;
    state.catalog.store().revoke_grant(&id, gdx_catalog::now()).await?;
    state.data.refresh().await.map_err(|e| ApiError::internal(&e))?;
    tracing::info!(grant = %id, dataset = %grant.dataset, department = %grant.department, principal = %caller.principal.id, "grant revoked");
    Ok(StatusCode::NO_CONTENT)
}
