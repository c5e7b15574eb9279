//! The audit of requests: the middleware that appends one record per
//! request to the audit log before the answer leaves.
//!
//! It sits outside authentication, so refusals (401, 403) are recorded too.
//! Authentication fills in who is asking; handlers add what they touched
//! (datasets and versions, SQL, rows, purpose, subject keys, the object
//! acted on) through the request's [`AuditSlot`]. The answer is held until
//! the record is durable; when the audit log cannot be written the caller
//! gets `503 unavailable` instead: nothing is served unrecorded.
//!
//! Successful reads of the catalogue and of the caller itself are not
//! recorded (they are not data access); everything else is.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{self, ApiError};
use crate::audit::Record;
use crate::state::AppState;

/// What a request touched, filled in as it is handled.
#[derive(Debug, Clone, Default)]
pub struct Note {
    /// The principal, once authenticated.
    pub principal: Option<String>,
    /// Its department.
    pub department: Option<String>,
    /// The action, when the route's default name is not precise enough.
    pub action: Option<String>,
    /// Datasets concerned.
    pub datasets: Vec<String>,
    /// Versions read.
    pub versions: BTreeMap<String, i64>,
    /// The SQL run.
    pub sql: Option<String>,
    /// Rows returned or written.
    pub rows: Option<u64>,
    /// The declared purpose.
    pub purpose: Option<String>,
    /// Subject keys touched (citizen IDs, credit codes), in clear until the
    /// middleware hashes them: they never reach the log in clear.
    pub subjects: Vec<String>,
    /// The object acted on.
    pub target: Option<String>,
    /// Further detail (a rejection reason, a preview department).
    pub detail: Option<String>,
}

/// The request's note, shared between the middleware, authentication and the handler.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Note>>);

impl AuditSlot {
    /// Changes the note.
    pub fn note(&self, f: impl FnOnce(&mut Note)) {
        let mut note = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut note);
    }

    fn take(&self) -> Note {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Reads that are not recorded when they succeed: the catalogue and the caller itself.
const UNRECORDED_READS: &[&str] = &[
    "/api/v1/me",
    "/api/v1/departments",
    "/api/v1/departments/{id}",
    "/api/v1/datasets",
    "/api/v1/datasets/{id}",
    "/api/v1/datasets/{id}/versions",
];

/// Routes whose `rows` are rows the caller received: they count against the
/// quotas of the grants it reads under (a streamed answer counts its rows
/// when it ends).
const ROW_READS: &[&str] = &[
    "/api/v1/query",
    "/api/v1/datasets/{id}/records",
    "/api/v1/datasets/{id}/records/{key}",
    "/api/v1/datasets/{id}/records:batchGet",
    "/api/v1/datasets/{id}/records:verify",
];

/// The action a route stands for.
pub fn action_of(method: &Method, route: &str) -> String {
    let named = match (method.as_str(), route) {
        ("POST", "/api/v1/query") => "query",
        ("GET", "/api/v1/datasets/{id}/records/{key}") | ("GET", "/api/v1/datasets/{id}/records") => "lookup",
        ("POST", "/api/v1/datasets/{id}/records:batchGet") => "batch_lookup",
        ("POST", "/api/v1/datasets/{id}/records:verify") => "verify",
        ("POST", "/api/v1/departments") => "department.create",
        ("POST", "/api/v1/principals") => "principal.create",
        ("PATCH", "/api/v1/principals/{id}") => "principal.update",
        ("POST", "/api/v1/principals/{id}/tokens") => "token.create",
        ("POST", "/api/v1/principals/{id}/certificates") => "certificate.create",
        ("DELETE", "/api/v1/tokens/{id}") => "token.revoke",
        ("POST", "/api/v1/datasets") => "dataset.create",
        ("PATCH", "/api/v1/datasets/{id}") => "dataset.update",
        ("POST", "/api/v1/datasets/{id}/versions") => "dataset.push",
        ("POST", "/api/v1/datasets/{id}/maintenance") => "dataset.maintenance",
        ("PUT", "/api/v1/datasets/{id}/policy") => "policy.set",
        ("GET", "/api/v1/datasets/{id}/policy") => "policy.read",
        ("POST", "/api/v1/sharing-requests") => "request.create",
        ("POST", "/api/v1/sharing-requests/{id}/approve") => "request.approve",
        ("POST", "/api/v1/sharing-requests/{id}/reject") => "request.reject",
        ("DELETE", "/api/v1/grants/{id}") => "grant.revoke",
        ("POST", "/api/v1/feedback") => "feedback.create",
        ("POST", "/api/v1/feedback/{id}/resolve") => "feedback.resolve",
        ("POST", "/api/v1/push/rules") => "rule.create",
        ("DELETE", "/api/v1/push/rules/{id}") => "rule.delete",
        ("POST", "/api/v1/push/rules/{id}/run") => "rule.run",
        ("GET", "/api/v1/push/rules/{id}/events") => "push",
        ("POST", "/api/v1/push/rules/{id}/deliveries/{event}/retry") => "delivery.retry",
        ("GET", "/api/v1/audit") => "audit.list",
        ("GET", "/api/v1/audit/verify") => "audit.verify",
        ("GET", "/api/v1/audit/subjects/{key}") => "audit.subject",
        ("GET", "/api/v1/stats/usage") => "stats.usage",
        ("GET", "/api/v1/supervision/overdue") => "supervision.overdue",
        ("GET", _) => "read",
        _ => "call",
    };
    named.to_string()
}

/// The outcome of a request, by its status.
pub fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=399 => "ok",
        401 => "unauthenticated",
        403 => "denied",
        400..=499 => "invalid",
        _ => "failed",
    }
}

/// The middleware.
pub async fn record(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let slot = AuditSlot::default();
    request.extensions_mut().insert(slot.clone());
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_default();
    // The object of the route: a dataset (its id names it), or another object by id.
    // Other path parameters (a subject key) are never recorded in clear.
    let (mut parts, body) = request.into_parts();
    if let Ok(params) = axum::RequestPartsExt::extract::<RawPathParams>(&mut parts).await
        && let Some((_, id)) = params.iter().find(|(k, _)| *k == "id")
    {
        let id = id.to_string();
        slot.note(|n| {
            if route.starts_with("/api/v1/datasets/{id}") {
                n.datasets.push(id);
            } else {
                n.target = Some(id);
            }
        });
    }
    let request = Request::from_parts(parts, body);
    let response = next.run(request).await;
    let status = response.status();
    if status.is_success() && method == Method::GET && UNRECORDED_READS.contains(&route.as_str()) {
        return response;
    }
    let note = slot.take();
    let subjects: Vec<String> = note.subjects.iter().map(|k| state.audit.subject_hash(k)).collect();
    let alert = match &note.principal {
        Some(p) if status.is_success() => state
            .limits
            .observe_subjects(p, gdx_catalog::catalog::today_shanghai(), &subjects)
            .map(|a| subject_alert(p, note.department.clone(), &a)),
        _ => None,
    };
    if status.is_success()
        && let (Some(department), Some(rows)) = (&note.department, note.rows)
        && ROW_READS.contains(&route.as_str())
    {
        state.limits.count_quota_rows(&state.data, department, &note.datasets, rows, chrono::Utc::now());
    }
    let record = Record {
        principal: note.principal,
        department: note.department,
        action: note.action.unwrap_or_else(|| action_of(&method, &route)),
        method: Some(method.to_string()),
        route: Some(route),
        status: Some(status.as_u16()),
        outcome: outcome_of(status).to_string(),
        datasets: note.datasets,
        versions: note.versions,
        sql: note.sql,
        rows: note.rows,
        purpose: note.purpose,
        subjects,
        target: note.target,
        detail: note.detail,
        ..Record::default()
    };
    let mut written = state.audit.append(record).await;
    if let (Ok(_), Some(alert)) = (&written, alert) {
        written = state.audit.append(alert).await;
    }
    match written {
        Ok(_) => response,
        Err(e) => {
            tracing::error!(error = ?e, "audit record not written; the request is answered 503");
            ApiError::new(error::UNAVAILABLE, "the audit log cannot be written; nothing is served unrecorded")
                .into_response()
        }
    }
}

/// The audit record of a principal that reached its threshold of distinct
/// subjects looked up in a day.
fn subject_alert(principal: &str, department: Option<String>, alert: &crate::limits::SubjectAlert) -> Record {
    tracing::warn!(principal, threshold = alert.threshold, day = %alert.day, "unusually many distinct subjects looked up");
    metrics::counter!("gdx_subject_alerts_total").increment(1);
    Record {
        principal: Some(principal.to_string()),
        department,
        action: "alert.distinct_subjects".into(),
        outcome: "alert".into(),
        detail: Some(format!(
            "{} distinct subjects looked up on {} (Asia/Shanghai), the alert threshold of this principal",
            alert.threshold, alert.day
        )),
        ..Record::default()
    }
}
