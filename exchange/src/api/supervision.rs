//! Supervision: what auditors see of the sharing process. An auditor sees
//! its own department and those below it (`parent`), or everything when its
//! department is a supervising one (`supervisor_departments`).

use std::collections::BTreeSet;

use axum::Extension;
use axum::extract::State;
use gdx_catalog::{Feedback, PageRequest, SharingRequest, WorkQuery, now};
use serde::Serialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The departments an auditor oversees; `None` for every department.
pub async fn oversight(state: &AppState, caller: &Caller) -> ApiResult<Option<BTreeSet<String>>> {
    let own = caller.principal.department.clone().ok_or_else(ApiError::denied)?;
    if state.config.supervisor_departments.contains(&own) {
        return Ok(None);
    }
    let store = state.catalog.store();
    let parents: Vec<(String, Option<String>)> =
        every_page(|page| store.list_departments(page)).await?.into_iter().map(|d| (d.id, d.parent)).collect();
    // Own department, then every department whose parent is already in (to any depth).
    let mut scope = BTreeSet::from([own]);
    loop {
        let before = scope.len();
        for (id, parent) in &parents {
            if parent.as_ref().is_some_and(|p| scope.contains(p)) {
                scope.insert(id.clone());
            }
        }
        if scope.len() == before {
            return Ok(Some(scope));
        }
    }
}

/// Every item of a paged list, page after page.
async fn every_page<T, F, Fut>(mut fetch: F) -> ApiResult<Vec<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = gdx_catalog::Result<gdx_catalog::Page<T>>>,
{
    let mut items = Vec::new();
    let mut page = PageRequest::first(PageRequest::MAX_LIMIT);
    loop {
        let p = fetch(page.clone()).await?;
        items.extend(p.items);
        match p.next_page_token {
            Some(token) => page.token = Some(token),
            None => return Ok(items),
        }
    }
}

/// The audit records an auditor may see.
pub async fn audit_scope(state: &AppState, caller: &Caller) -> ApiResult<crate::audit::Scope> {
    Ok(match oversight(state, caller).await? {
        None => crate::audit::Scope::All,
        Some(departments) => crate::audit::Scope::Departments(departments),
    })
}

/// Overdue sharing requests and feedback.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overdue {
    /// Requests still pending after their deadline, oldest deadline first.
    pub requests: Vec<SharingRequest>,
    /// Feedback still open after its deadline, oldest deadline first.
    pub feedback: Vec<Feedback>,
}

/// Sharing requests and feedback left unanswered past their deadline, of the
/// departments the auditor oversees (as provider or as the asking side).
#[utoipa::path(get, operation_id = "overdue", path = "/api/v1/supervision/overdue", tag = "supervision",
    responses((status = 200, description = "OK", body = Overdue)))]
pub async fn overdue(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<axum::Json<Overdue>> {
    let scope = oversight(&state, &caller).await?;
    let at = now();
    let seen = |provider: &str, department: &str| {
        scope.as_ref().is_none_or(|s| s.contains(provider) || s.contains(department))
    };
    let query = WorkQuery { overdue_at: Some(at), ..WorkQuery::default() };
    let store = state.catalog.store();
    let mut requests: Vec<SharingRequest> = every_page(|page| store.list_requests(query.clone(), page))
        .await?
        .into_iter()
        .filter(|r| seen(&r.provider, &r.department))
        .map(|r| r.with_overdue(at))
        .collect();
    let mut feedback: Vec<Feedback> = every_page(|page| store.list_feedback(query.clone(), page))
        .await?
        .into_iter()
        .filter(|f| seen(&f.provider, &f.department))
        .map(|f| f.with_overdue(at))
        .collect();
    requests.sort_by_key(|r| r.due_at);
    feedback.sort_by_key(|f| f.due_at);
    Ok(axum::Json(Overdue { requests, feedback }))
}
