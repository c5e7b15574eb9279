//! Data-quality feedback (the measures' doubt and correction): a reader
//! flags a record; the provider's stewards answer by a deadline that it was
//! corrected in a version, or why not; the flagger sees the outcome.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use gdx_catalog::token::new_id;
use gdx_catalog::{Feedback, FeedbackStatus, FieldError, Page, WorkQuery, now};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Json, Query, page_request};
use super::sharing::{ListParams, concerns, scope_query, text_problem};
use crate::state::AppState;

/// Longest record key accepted, in characters.
const MAX_KEY: usize = 256;

/// A new feedback on a record.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFeedback {
    /// The dataset, `{department}.{name}`.
    pub dataset: String,
    /// The record's key.
    pub key: String,
    /// The column in doubt.
    pub column: Option<String>,
    /// What seems wrong.
    pub comment: String,
}

/// How the provider answers a feedback.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// `corrected` (with the version that corrected it) or `rejected` (with a reason).
    pub outcome: String,
    /// The version that corrected the record.
    pub version: Option<i64>,
    /// Why it was rejected.
    pub reason: Option<String>,
}

/// Flags a record of a dataset the caller reads. Due a configured number of
/// working days later (5 by default).
#[utoipa::path(post, operation_id = "create_feedback", path = "/api/v1/feedback", tag = "sharing",
    request_body = NewFeedback,
    responses(
        (status = 201, description = "Created", body = Feedback),
        (status = 404, description = "Unknown dataset", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<NewFeedback>,
) -> ApiResult<(StatusCode, axum::Json<Feedback>)> {
    let department = caller.principal.department.clone().ok_or_else(ApiError::denied)?;
    caller.audit.note(|n| {
        n.datasets = vec![body.dataset.clone()];
        n.subjects = vec![body.key.trim().to_string()];
    });
    let dataset = state.catalog.store().dataset(&body.dataset).await?;
    let at = now();
    // Only what the caller reads can be doubted; anything else is as unknown as a missing dataset.
    if state.data.plan(&caller.principal, &dataset, at).is_err() {
        return Err(ApiError::not_found("dataset", &body.dataset));
    }
    let mut errors: Vec<FieldError> = text_problem("comment", &body.comment).into_iter().collect();
    if body.key.trim().is_empty() || body.key.chars().count() > MAX_KEY {
        errors.push(FieldError::new("key", format!("must be 1 to {MAX_KEY} characters")));
    }
    if let Some(c) = &body.column
        && !dataset.columns.iter().any(|col| &col.name == c)
    {
        errors.push(FieldError::new("column", format!("{} has no column {c}", dataset.id)));
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let deadline = state.calendar.add_working_days(at, state.config.feedback_due_working_days);
    let feedback = Feedback {
        id: new_id("fb_"),
        dataset: dataset.id.clone(),
        provider: dataset.department.clone(),
        department,
        created_by: caller.principal.id.clone(),
        key: body.key.trim().to_string(),
        column: body.column,
        comment: body.comment.trim().to_string(),
        status: FeedbackStatus::Open,
        created_at: at,
        due_at: deadline.due_at,
        due_on: deadline.due_on,
        overdue: false,
        version: None,
        reason: None,
        resolved_by: None,
        resolved_at: None,
    };
    let feedback = state.catalog.store().create_feedback(feedback).await?;
    caller.audit.note(|n| n.target = Some(feedback.id.clone()));
    tracing::info!(feedback = %feedback.id, dataset = %feedback.dataset, department = %feedback.department, "feedback given");
    Ok((StatusCode::CREATED, axum::Json(feedback)))
}

/// Feedback the caller's department gave or received, newest first.
#[utoipa::path(get, operation_id = "list_feedback", path = "/api/v1/feedback", tag = "sharing", params(ListParams),
    responses((status = 200, description = "OK", body = Page<Feedback>)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<Feedback>>> {
    let status = match p.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<FeedbackStatus>().map_err(|m| ApiError::invalid("status", m))?.to_string()),
        None => None,
    };
    let at = now();
    let mut query = WorkQuery { status, overdue_at: p.overdue.unwrap_or(false).then_some(at), ..WorkQuery::default() };
    scope_query(&caller, p.role.as_deref(), &mut query)?;
    let page = state.catalog.store().list_feedback(query, page_request(p.limit, p.page_token)?).await?;
    Ok(axum::Json(Page {
        items: page.items.into_iter().map(|f| f.with_overdue(at)).collect(),
        next_page_token: page.next_page_token,
    }))
}

/// Resolves an open feedback (stewards of the providing department).
#[utoipa::path(post, operation_id = "resolve_feedback", path = "/api/v1/feedback/{id}/resolve", tag = "sharing",
    params(("id" = String, Path)),
    request_body = Resolution,
    responses(
        (status = 200, description = "Resolved", body = Feedback),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Resolved already", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn resolve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<Resolution>,
) -> ApiResult<axum::Json<Feedback>> {
    let mut feedback = state.catalog.store().feedback(&id).await?;
    caller.audit.note(|n| {
        n.datasets = vec![feedback.dataset.clone()];
        n.subjects = vec![feedback.key.clone()];
    });
    if !concerns(&caller, &feedback.provider, &feedback.department) {
        return Err(ApiError::not_found("feedback", &id));
    }
    caller.require(&state, &Method::POST, &feedback.provider)?;
    if feedback.status != FeedbackStatus::Open {
        return Err(gdx_catalog::Error::Answered { kind: "feedback", id }.into());
    }
    let reason = body.reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
    match body.outcome.as_str() {
        "corrected" => {
            let Some(version) = body.version else {
                return Err(ApiError::invalid("version", "is required: the version that corrected the record"));
            };
            // An unknown version is a fault of the body (422), not a missing route object (404).
            match state.catalog.store().version(&feedback.dataset, version).await {
                Ok(_) => {}
                Err(gdx_catalog::Error::NotFound { .. }) => {
                    return Err(ApiError::invalid("version", format!("{} has no version {version}", feedback.dataset)));
                }
                Err(e) => return Err(e.into()),
            }
            feedback.status = FeedbackStatus::Corrected;
            feedback.version = Some(version);
        }
        "rejected" => {
            let Some(r) = &reason else {
                return Err(ApiError::invalid("reason", "is required when rejecting"));
            };
            if let Some(problem) = text_problem("reason", r) {
                return Err(ApiError::validation(vec![problem]));
            }
            feedback.status = FeedbackStatus::Rejected;
        }
        _ => return Err(ApiError::invalid("outcome", "must be one of corrected|rejected")),
    }
    let at = now();
    feedback.reason = reason;
    feedback.resolved_by = Some(caller.principal.id.clone());
    feedback.resolved_at = Some(at);
    let feedback = state.catalog.store().resolve_feedback(feedback).await?.with_overdue(at);
    tracing::info!(feedback = %feedback.id, dataset = %feedback.dataset, outcome = %feedback.status, "feedback resolved");
    Ok(axum::Json(feedback))
}
