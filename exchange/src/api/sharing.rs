//! Sharing requests: a department asks for a conditional dataset (or for
//! personal columns of an unconditional one in clear) with a purpose; the
//! provider's stewards approve, only ever narrower than asked, or reject with
//! a reason, within a deadline counted in working days. Approval creates the
//! grant at once.

use std::collections::BTreeSet;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use gdx_catalog::token::new_id;
use gdx_catalog::{
    Dataset, DatasetStatus, FieldError, Grant, GrantScope, Page, RequestStatus, Role, Sensitivity, SharingRequest,
    SharingType, WorkQuery, now,
};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Json, Query, page_request};
use crate::state::AppState;

/// Longest purpose, reason or comment accepted, in characters.
pub const MAX_TEXT: usize = 2000;

/// A new sharing request.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// The dataset asked for, `{department}.{name}`.
    pub dataset: String,
    /// What the data is for.
    pub purpose: String,
    /// Only these columns are needed; all readable ones when absent.
    pub columns: Option<Vec<String>>,
    /// Personal columns needed in clear.
    #[serde(default)]
    pub unmask: Vec<String>,
    /// When access should end; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the provider approves: each field only narrows what was asked;
/// an absent field keeps what was asked.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Fewer columns than asked.
    pub columns: Option<Vec<String>>,
    /// Fewer personal columns in clear than asked.
    pub unmask: Option<Vec<String>>,
    /// A row filter over the dataset's columns.
    pub row_filter: Option<String>,
    /// An earlier end than asked.
    pub expires_at: Option<DateTime<Utc>>,
    /// Rows a day the department may receive under the grant (1 or more);
    /// past it its reads of the dataset answer `429 quota_exceeded` until
    /// the next day (Asia/Shanghai).
    pub rows_per_day: Option<u64>,
}

/// A rejection.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    /// Why (required).
    #[serde(default)]
    pub reason: String,
}

/// Filters of the request and feedback lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `provider`: those about the caller's department's datasets (its inbox);
    /// `consumer`: those the caller's department made; absent: both.
    pub role: Option<String>,
    /// Requests: pending|approved|rejected; feedback: open|corrected|rejected.
    pub status: Option<String>,
    /// Only those still unanswered after their deadline.
    pub overdue: Option<bool>,
    /// Only those of this dataset.
    pub dataset: Option<String>,
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// Asks for a dataset. The request is due a configured number of working
/// days later (10 by default), counted in Asia/Shanghai.
#[utoipa::path(post, operation_id = "create_sharing_request", path = "/api/v1/sharing-requests", tag = "sharing",
    request_body = NewRequest,
    responses(
        (status = 201, description = "Created", body = SharingRequest),
        (status = 404, description = "Unknown dataset", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewRequest>,
) -> ApiResult<(StatusCode, axum::Json<SharingRequest>)> {
    let department = caller.principal.department.clone().ok_or_else(ApiError::denied)?;
    let dataset = state.catalog.store().dataset(&body.dataset).await?;
    let at = now();
    let mut errors = Vec::new();
    if dataset.department == department {
        errors.push(FieldError::new("dataset", "is provided by your own department, which reads it already"));
    } else if dataset.status == DatasetStatus::Retired {
        errors.push(FieldError::new("dataset", "is retired"));
    } else if dataset.sharing == SharingType::None {
        errors.push(FieldError::new("dataset", "is not shared (sharing type none): it cannot be requested"));
    } else if dataset.sharing == SharingType::Unconditional && body.unmask.is_empty() {
        errors.push(FieldError::new(
            "unmask",
            "the dataset is unconditional and readable without a request; a request for it asks for personal columns in clear",
        ));
    }
    errors.extend(text_problem("purpose", &body.purpose));
    errors.extend(columns_problems(&dataset, "columns", body.columns.as_deref()));
    errors.extend(unmask_problems(&dataset, &body.unmask, body.columns.as_deref()));
    if body.expires_at.is_some_and(|e| e <= at) {
        errors.push(FieldError::new("expires_at", "must lie in the future"));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let deadline = state.calendar.add_working_days(at, state.config.request_due_working_days);
    let request = SharingRequest {
        id: new_id("req_"),
        dataset: dataset.id.clone(),
        provider: dataset.department.clone(),
        department,
        requested_by: caller.principal.id.clone(),
        purpose: body.purpose.trim().to_string(),
        requested: GrantScope {
            columns: body.columns,
            unmask: body.unmask,
            row_filter: None,
            expires_at: body.expires_at,
            rows_per_day: None,
        },
        status: RequestStatus::Pending,
        created_at: at,
        due_at: deadline.due_at,
        due_on: deadline.due_on,
        due_explanation: deadline.explanation,
        overdue: false,
        decided_by: None,
        decided_at: None,
        approved: None,
        grant_id: None,
        reason: None,
    };
    let request = state.catalog.store().create_request(request).await?;
    caller.audit.note(|n| {
        n.target = Some(request.id.clone());
        n.datasets = vec![request.dataset.clone()];
        n.purpose = Some(request.purpose.clone());
    });
    tracing::info!(request = %request.id, dataset = %request.dataset, department = %request.department, due_on = %request.due_on, "sharing request made");
    Ok((StatusCode::CREATED, axum::Json(request)))
}

/// Sharing requests the caller's department made or received, newest first
/// (an administrator sees every one).
#[utoipa::path(get, operation_id = "list_sharing_requests", path = "/api/v1/sharing-requests", tag = "sharing",
    params(ListParams),
    responses((status = 200, description = "OK", body = Page<SharingRequest>)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<SharingRequest>>> {
    let status = match p.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<RequestStatus>().map_err(|m| ApiError::invalid("status", m))?.to_string()),
        None => None,
    };
    let at = now();
    let mut query = WorkQuery {
        status,
        overdue_at: p.overdue.unwrap_or(false).then_some(at),
        dataset: p.dataset.filter(|d| !d.is_empty()),
        ..WorkQuery::default()
    };
    scope_query(&caller, p.role.as_deref(), &mut query)?;
    let page = state.catalog.store().list_requests(query, page_request(p.limit, p.page_token)?).await?;
    Ok(axum::Json(Page {
        items: page.items.into_iter().map(|r| r.with_overdue(at)).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Narrows a list to what the caller's department provides or asked for.
pub fn scope_query(caller: &Caller, role: Option<&str>, query: &mut WorkQuery) -> ApiResult<()> {
    let own = caller.principal.department.clone();
    let admin = caller.principal.has_role(Role::Admin);
    match role.filter(|r| !r.is_empty()) {
        Some("provider") => query.provider = Some(own.ok_or_else(ApiError::denied)?),
        Some("consumer") => query.department = Some(own.ok_or_else(ApiError::denied)?),
        Some(_) => return Err(ApiError::invalid("role", "must be one of provider|consumer")),
        None if admin => {}
        None => query.involving = Some(own.ok_or_else(ApiError::denied)?),
    }
    Ok(())
}

/// Whether the caller may see an item between `provider` and `department`.
pub fn concerns(caller: &Caller, provider: &str, department: &str) -> bool {
    let own = caller.principal.department.as_deref();
    caller.principal.has_role(Role::Admin) || own == Some(provider) || own == Some(department)
}

/// One sharing request (to the two departments concerned).
#[utoipa::path(get, operation_id = "get_sharing_request", path = "/api/v1/sharing-requests/{id}", tag = "sharing",
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "OK", body = SharingRequest),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<SharingRequest>> {
    Ok(axum::Json(visible(&state, &caller, &id).await?.with_overdue(now())))
}

async fn visible(state: &AppState, caller: &Caller, id: &str) -> ApiResult<SharingRequest> {
    let request = state.catalog.store().request(id).await?;
    if !concerns(caller, &request.provider, &request.department) {
        return Err(ApiError::not_found("sharing request", id));
    }
    Ok(request)
}

/// The request a steward of the provider may answer: the provider's
/// stewards only, never for their own department, and only once.
async fn answerable(state: &AppState, caller: &Caller, id: &str) -> ApiResult<SharingRequest> {
    let request = state.catalog.store().request(id).await?;
    caller.require(state, &Method::POST, &request.provider)?;
    if caller.principal.department.as_deref() == Some(request.department.as_str()) {
        return Err(ApiError::denied());
    }
    if request.status != RequestStatus::Pending {
        return Err(gdx_catalog::Error::Answered { kind: "sharing request", id: id.to_string() }.into());
    }
    Ok(request)
}

/// Approves a pending request, possibly narrower than asked; the grant is in force at once.
#[utoipa::path(post, operation_id = "approve_sharing_request", path = "/api/v1/sharing-requests/{id}/approve", tag = "sharing",
    params(("id" = String, Path)),
    request_body = Approval,
    responses(
        (status = 200, description = "Approved", body = SharingRequest),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Answered already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn approve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<Approval>,
) -> ApiResult<axum::Json<SharingRequest>> {
    let mut request = answerable(&state, &caller, &id).await?;
    caller.audit.note(|n| n.datasets = vec![request.dataset.clone()]);
    let dataset = state.catalog.store().dataset(&request.dataset).await?;
    let at = now();
    let scope = narrowed(&dataset, &request.requested, body, at)?;
    let grant = Grant {
        id: new_id("gr_"),
        dataset: request.dataset.clone(),
        department: request.department.clone(),
        columns: scope.columns.clone(),
        unmask: scope.unmask.clone(),
        row_filter: scope.row_filter.clone(),
        expires_at: scope.expires_at,
        rows_per_day: scope.rows_per_day,
        revoked_at: None,
        request: Some(request.id.clone()),
        created_by: caller.principal.id.clone(),
        created_at: at,
    };
    request.status = RequestStatus::Approved;
    request.decided_by = Some(caller.principal.id.clone());
    request.decided_at = Some(at);
    request.grant_id = Some(grant.id.clone());
    request.approved = Some(scope);
    let request = state.catalog.store().approve_request(request, grant).await?.with_overdue(at);
    caller.audit.note(|n| n.detail = request.grant_id.as_ref().map(|g| format!("grant {g}")));
    state.data.refresh().await.map_err(|e| ApiError::internal(&e))?;
    tracing::info!(request = %request.id, dataset = %request.dataset, department = %request.department, grant = ?request.grant_id, "sharing request approved");
    Ok(axum::Json(request))
}

/// Rejects a pending request with a reason.
#[utoipa::path(post, operation_id = "reject_sharing_request", path = "/api/v1/sharing-requests/{id}/reject", tag = "sharing",
    params(("id" = String, Path)),
    request_body = Rejection,
    responses(
        (status = 200, description = "Rejected", body = SharingRequest),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Answered already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reject(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<Rejection>,
) -> ApiResult<axum::Json<SharingRequest>> {
    let mut request = answerable(&state, &caller, &id).await?;
    caller.audit.note(|n| {
        n.datasets = vec![request.dataset.clone()];
        n.detail = Some(body.reason.trim().to_string()).filter(|r| !r.is_empty());
    });
    if let Some(problem) = text_problem("reason", &body.reason) {
        return Err(ApiError::validation(vec![problem]));
    }
    let at = now();
    request.status = RequestStatus::Rejected;
    request.decided_by = Some(caller.principal.id.clone());
    request.decided_at = Some(at);
    request.reason = Some(body.reason.trim().to_string());
    let request = state.catalog.store().reject_request(request).await?.with_overdue(at);
    tracing::info!(request = %request.id, dataset = %request.dataset, department = %request.department, "sharing request rejected");
    Ok(axum::Json(request))
}

/// A required free text: present, not blank, not too long.
pub fn text_problem(field: &str, text: &str) -> Option<FieldError> {
    if text.trim().is_empty() {
        Some(FieldError::new(field, "is required"))
    } else if text.chars().count() > MAX_TEXT {
        Some(FieldError::new(field, format!("must be at most {MAX_TEXT} characters")))
    } else {
        None
    }
}

/// Problems of a list of columns: known, not secret, no repeats, not empty.
fn columns_problems(dataset: &Dataset, field: &str, columns: Option<&[String]>) -> Vec<FieldError> {
    let Some(columns) = columns else { return Vec::new() };
    let mut out = Vec::new();
    if columns.is_empty() {
        out.push(FieldError::new(field, "must name at least one column (or be absent for all)"));
    }
    let mut seen = BTreeSet::new();
    for (i, name) in columns.iter().enumerate() {
        match dataset.columns.iter().find(|c| &c.name == name) {
            None => out.push(FieldError::new(format!("{field}[{i}]"), format!("{} has no column {name}", dataset.id))),
            Some(c) if c.sensitivity == Sensitivity::Secret => {
                out.push(FieldError::new(format!("{field}[{i}]"), format!("{name} is secret and never shared")))
            }
            Some(_) if !seen.insert(name) => {
                out.push(FieldError::new(format!("{field}[{i}]"), format!("{name} is named twice")))
            }
            Some(_) => {}
        }
    }
    out
}

/// Problems of an `unmask` list: personal columns of the dataset, among the columns asked for.
fn unmask_problems(dataset: &Dataset, unmask: &[String], columns: Option<&[String]>) -> Vec<FieldError> {
    let mut out = Vec::new();
    for (i, name) in unmask.iter().enumerate() {
        let field = format!("unmask[{i}]");
        match dataset.columns.iter().find(|c| &c.name == name) {
            None => out.push(FieldError::new(field, format!("{} has no column {name}", dataset.id))),
            Some(c) if c.sensitivity != Sensitivity::Personal => {
                out.push(FieldError::new(field, format!("{name} is not a personal column")))
            }
            Some(_) if columns.is_some_and(|cs| !cs.contains(name)) => {
                out.push(FieldError::new(field, format!("{name} is not among the columns asked for")))
            }
            Some(_) => {}
        }
    }
    out
}

/// What an approval grants: what was asked, narrowed by the approval; 422
/// naming each field that would widen it.
fn narrowed(dataset: &Dataset, asked: &GrantScope, approval: Approval, at: DateTime<Utc>) -> ApiResult<GrantScope> {
    let mut errors = columns_problems(dataset, "columns", approval.columns.as_deref());
    let columns = match (approval.columns, &asked.columns) {
        (Some(approved), Some(asked)) => {
            for (i, c) in approved.iter().enumerate() {
                if !asked.contains(c) {
                    errors.push(FieldError::new(format!("columns[{i}]"), format!("{c} was not asked for")));
                }
            }
            Some(approved)
        }
        (approved, asked) => approved.or_else(|| asked.clone()),
    };
    let unmask = match approval.unmask {
        Some(approved) => {
            for (i, c) in approved.iter().enumerate() {
                if !asked.unmask.contains(c) {
                    errors.push(FieldError::new(format!("unmask[{i}]"), format!("{c} was not asked for in clear")));
                }
            }
            approved
        }
        None => asked.unmask.clone(),
    };
    let unmask: Vec<String> = unmask.into_iter().filter(|c| columns.as_ref().is_none_or(|cs| cs.contains(c))).collect();
    let row_filter = approval.row_filter.map(|f| f.trim().to_string()).filter(|f| !f.is_empty());
    if let Some(filter) = &row_filter {
        let names: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
        if let Err(e) = gdx_policies::filter::parse(filter, &names) {
            errors.push(FieldError::new("row_filter", e));
        }
    }
    let expires_at = match (approval.expires_at, asked.expires_at) {
        (Some(approved), Some(asked)) if approved > asked => {
            errors.push(FieldError::new("expires_at", format!("must not be later than asked ({asked})")));
            Some(approved)
        }
        (approved, asked) => approved.or(asked),
    };
    if expires_at.is_some_and(|e| e <= at) {
        errors.push(FieldError::new("expires_at", "must lie in the future"));
    }
    if approval.rows_per_day == Some(0) {
        errors.push(FieldError::new("rows_per_day", "must be at least 1 (leave it out for no quota)"));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    Ok(GrantScope { columns, unmask, row_filter, expires_at, rows_per_day: approval.rows_per_day })
}
