//! `GET /api/v1/me`: who the caller is.

use axum::Extension;
use axum::extract::State;
use gdx_catalog::{Department, Principal, Role};
use serde::Serialize;

use super::auth::Caller;
use super::error::ApiResult;
use crate::state::AppState;

/// The caller as the server sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The principal.
    pub principal: Principal,
    /// Its department, if any.
    pub department: Option<Department>,
    /// Its roles.
    pub roles: Vec<Role>,
    /// The id of the token used for this request.
    pub token_id: String,
}

/// The caller: principal, department and roles.
#[utoipa::path(operation_id = "me", get, path = "/api/v1/me", tag = "identities",
    responses(
        (status = 200, description = "OK", body = Me),
    ))]
pub async fn me(State(state): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<axum::Json<Me>> {
    let department = match &caller.principal.department {
        Some(id) => Some(state.catalog.store().department(id).await?),
        None => None,
    };
    Ok(axum::Json(Me {
        roles: caller.principal.roles.clone(),
        principal: (*caller.principal).clone(),
        department,
        token_id: caller.token_id.clone(),
    }))
}
