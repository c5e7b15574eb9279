//! The audit trail for auditors: records with filters, the chain's
//! verification, the data tracker of one subject, and usage statistics;
//! each narrowed to the departments the auditor oversees.

use axum::Extension;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{self, ApiError, ApiResult};
use super::extract::Query;
use super::supervision::audit_scope;
use crate::audit::{AuditError, Filter, Record, Usage, VerifyReport};
use crate::state::AppState;

/// Records per page by default, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        tracing::error!(error = ?e, "audit log");
        ApiError::new(error::UNAVAILABLE, "the audit log cannot be read now")
    }
}

/// Filters of the audit list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only records of this principal.
    pub principal: Option<String>,
    /// Only records of principals of this department.
    pub department: Option<String>,
    /// Only records naming this dataset.
    pub dataset: Option<String>,
    /// Only this action (`query`, `request.approve`, ...).
    pub action: Option<String>,
    /// Only records at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only records before this time.
    pub to: Option<DateTime<Utc>>,
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// A page of audit records, oldest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// The records: `seq`, `time`, `principal`, `department`, `action`,
    /// `method`, `route`, `status`, `outcome`, `datasets`, `versions`, `sql`,
    /// `rows`, `purpose`, `subjects` (keyed hashes), `target`, `detail`.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Record>,
    /// Token for the next page; `null` on the last.
    pub next_page_token: Option<String>,
}

fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid("limit", format!("must be between 1 and {MAX_LIMIT}"))),
    }
}

/// The last seq of the previous page, from its token.
fn cursor(token: Option<&str>) -> ApiResult<Option<u64>> {
    use base64::Engine;
    let Some(token) = token.filter(|t| !t.is_empty()) else { return Ok(None) };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("a:").and_then(|n| n.parse().ok()))
        .map(Some)
        .ok_or_else(|| ApiError::invalid("page_token", "is not a token this server issued"))
}

/// One page from `limit + 1` records read.
fn page(mut items: Vec<Record>, limit: usize) -> AuditPage {
    use base64::Engine;
    let next_page_token = (items.len() > limit).then(|| {
        items.truncate(limit);
        let last = items.last().map_or(0, |r| r.seq);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("a:{last}"))
    });
    AuditPage { items, next_page_token }
}

/// Audit records the auditor may see, oldest first.
#[utoipa::path(get, operation_id = "list_audit", path = "/api/v1/audit", tag = "supervision", params(AuditParams),
    responses((status = 200, description = "OK", body = AuditPage)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<AuditParams>,
) -> ApiResult<axum::Json<AuditPage>> {
    let limit = page_limit(p.limit)?;
    let after = cursor(p.page_token.as_deref())?;
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let filter = Filter {
        principal: nonempty(p.principal),
        department: nonempty(p.department),
        dataset: nonempty(p.dataset),
        action: nonempty(p.action),
        subject: None,
        from: p.from,
        to: p.to,
    };
    let scope = audit_scope(&state, &caller).await?;
    let items = state.audit.list(&filter, &scope, limit + 1, after).await?;
    Ok(axum::Json(page(items, limit)))
}

/// What to check the chain against.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VerifyParams {
    /// A head hash noted earlier: the chain must still contain it.
    pub expect_head: Option<String>,
}

/// Recomputes the hash chain, the signed checkpoints and the index, and names
/// the first broken record. `200` either way: `ok` tells.
#[utoipa::path(get, operation_id = "verify_audit", path = "/api/v1/audit/verify", tag = "supervision", params(VerifyParams),
    responses((status = 200, description = "The verdict", body = Object)))]
pub async fn verify(
    State(state): State<AppState>,
    Query(p): Query<VerifyParams>,
) -> ApiResult<axum::Json<VerifyReport>> {
    let expect = p.expect_head.filter(|h| !h.is_empty());
    if expect.as_ref().is_some_and(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ApiError::invalid("expect_head", "must be 64 hexadecimal digits"));
    }
    Ok(axum::Json(state.audit.verify(expect.as_deref()).await))
}

/// One access to a subject's records.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubjectAccess {
    /// When.
    pub time: DateTime<Utc>,
    /// The department that read, was pushed or flagged the record.
    pub department: Option<String>,
    /// The principal.
    pub principal: Option<String>,
    /// What was done (`lookup`, `verify`, `push`, `feedback.create`, ...).
    pub action: String,
    /// The datasets concerned.
    pub datasets: Vec<String>,
    /// The declared purpose.
    pub purpose: Option<String>,
    /// `ok`, `denied`, ...
    pub outcome: String,
    /// The audit record.
    pub seq: u64,
}

/// The data tracker: which departments read, were pushed or flagged this
/// citizen's or enterprise's records, when and for what purpose. The key is
/// matched by its keyed hash; the log never holds it in clear.
#[utoipa::path(get, operation_id = "track_subject", path = "/api/v1/audit/subjects/{key}", tag = "supervision",
    params(("key" = String, Path, description = "An ID number, a credit code, or another record key"), ("limit" = Option<usize>, Query), ("page_token" = Option<String>, Query)),
    responses((status = 200, description = "OK", body = Object)))]
pub async fn subject(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    Query(p): Query<super::extract::PageParams>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let limit = page_limit(p.limit)?;
    let after = cursor(p.page_token.as_deref())?;
    let filter = Filter { subject: Some(state.audit.subject_hash(key.trim())), ..Filter::default() };
    let scope = audit_scope(&state, &caller).await?;
    let page = page(state.audit.list(&filter, &scope, limit + 1, after).await?, limit);
    let items: Vec<SubjectAccess> = page
        .items
        .into_iter()
        .map(|r| SubjectAccess {
            time: r.time,
            department: r.department,
            principal: r.principal,
            action: r.action,
            datasets: r.datasets,
            purpose: r.purpose,
            outcome: r.outcome,
            seq: r.seq,
        })
        .collect();
    Ok(axum::Json(serde_json::json!({"items": items, "next_page_token": page.next_page_token})))
}

/// Filters of the usage statistics.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Only this dataset.
    pub dataset: Option<String>,
    /// Reads at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Reads before this time.
    pub to: Option<DateTime<Utc>>,
}

/// Successful reads (queries, lookups, verifications, pushes) per dataset and
/// consumer department.
#[utoipa::path(get, operation_id = "usage", path = "/api/v1/stats/usage", tag = "supervision", params(UsageParams),
    responses((status = 200, description = "OK", body = Object)))]
pub async fn usage(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<UsageParams>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let scope = audit_scope(&state, &caller).await?;
    let dataset = p.dataset.filter(|d| !d.is_empty());
    let items: Vec<Usage> = state.audit.usage(dataset.as_deref(), p.from, p.to, &scope).await?;
    Ok(axum::Json(serde_json::json!({"items": items, "next_page_token": null})))
}
