//! Push rules: a service registers governed SQL whose rows name subjects
//! that qualify for something; GDX evaluates it as the service, on a
//! trigger, and pushes each new match to the service's webhook (see
//! [`crate::push`]). A rule is its owner's: another principal's rule is
//! `404`, as if it did not exist.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use gdx_catalog::Page;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Json, Query};
use crate::push::{Delivery, Evaluated, Rule, RuleDef, RuleState, Trigger};
use crate::state::AppState;

/// Where a rule's events are sent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// An `http` or `https` URL.
    pub url: String,
    /// The signing secret (`whsec_<base64>` or any text); never returned.
    pub secret: String,
}

/// A new rule.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    /// A name, unique among the caller's rules.
    pub name: String,
    /// Governed SQL over what the caller may read; each row names a subject.
    pub sql: String,
    /// The column of the answer that names the subject (resident ID, credit code).
    pub subject_column: String,
    /// A message template, `{{column}}` filled from the subject's row.
    pub message: Option<String>,
    /// `{"on_change": ["renshe.pension"]}` or `{"schedule": "0 8 * * *"}`.
    pub trigger: Trigger,
    /// Where events are sent; without one they are only pulled.
    pub webhook: Option<WebhookSpec>,
    /// Why the data is used.
    pub purpose: String,
    /// Whether the first evaluation pushes subjects that already match (default true).
    pub backfill: Option<bool>,
    /// Events per subject per rule per day at most (default: no limit).
    pub max_per_subject: Option<u32>,
}

/// A rule as shown (never with its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuleView {
    /// `rule_<hex>`.
    pub id: String,
    /// The principal it runs as.
    pub owner: String,
    /// The owner's department.
    pub department: Option<String>,
    /// The definition.
    #[serde(flatten)]
    pub def: RuleDef,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// Where its evaluations stand.
    pub state: RuleState,
}

fn view(rule: Rule, state: RuleState) -> RuleView {
    RuleView {
        id: rule.id,
        owner: rule.owner,
        department: rule.department,
        def: rule.def,
        created_at: rule.created_at,
        state,
    }
}

/// The caller's rule, or `404`.
async fn own_rule(state: &AppState, caller: &Caller, id: &str) -> ApiResult<(Rule, RuleState)> {
    match state.push.store.rule(id).await.map_err(|e| ApiError::internal(&e))? {
        Some((rule, rule_state, _)) if rule.owner == caller.principal.id => Ok((rule, rule_state)),
        _ => Err(ApiError::not_found("rule", id)),
    }
}

/// Registers a rule. Its SQL is planned as the caller at once, so a rule
/// over data the caller may not read, or a subject column or template
/// field the answer lacks, is refused here rather than failing later.
#[utoipa::path(post, operation_id = "create_rule", path = "/api/v1/push/rules", tag = "push",
    request_body = CreateRule,
    responses(
        (status = 201, description = "Created", body = RuleView),
        (status = 400, description = "sql_not_allowed, table_not_found or invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The caller has a rule of that name", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CreateRule>,
) -> ApiResult<(StatusCode, axum::Json<RuleView>)> {
    caller.audit.note(|n| {
        n.sql = Some(body.sql.clone());
        n.purpose = Some(body.purpose.clone());
    });
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
    }
    if body.purpose.trim().is_empty() {
        return Err(ApiError::invalid("purpose", "say why the data is used"));
    }
    if body.max_per_subject == Some(0) {
        return Err(ApiError::invalid("max_per_subject", "must be at least 1"));
    }
    match &body.trigger {
        Trigger::OnChange(datasets) => {
            if datasets.is_empty() {
                return Err(ApiError::invalid("trigger.on_change", "name at least one dataset"));
            }
            for d in datasets {
                if state.catalog.store().dataset(d).await.is_err() {
                    return Err(ApiError::invalid("trigger.on_change", format!("no dataset {d}")));
                }
            }
        }
        Trigger::Schedule(text) => {
            crate::push::cron::Schedule::parse(text).map_err(|e| ApiError::invalid("trigger.schedule", e))?;
        }
    }
    if let Some(w) = &body.webhook {
        let url = reqwest::Url::parse(&w.url).map_err(|e| ApiError::invalid("webhook.url", e.to_string()))?;
        crate::webhook::check_url(&url, state.config.webhook_allow_private)
            .map_err(|e| ApiError::invalid("webhook.url", e.to_string()))?;
        crate::webhook::Secret::parse(&w.secret).map_err(|e| ApiError::invalid("webhook.secret", e.to_string()))?;
    }
    if let Some(why) = crate::query::refuse_statement(&body.sql) {
        return Err(ApiError::new(super::error::SQL_NOT_ALLOWED, why));
    }
    let as_of = HashMap::new();
    let sources =
        super::query::Sources { only: None, as_of: &as_of, audit: None, unversioned_empty: true, changes: None };
    let (df, versions) = super::query::governed_frame(&state, &caller.principal, &body.sql, sources).await?;
    caller.audit.note(|n| n.datasets = versions.keys().cloned().collect());
    let columns: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    if !columns.contains(&body.subject_column) {
        return Err(ApiError::invalid(
            "subject_column",
            format!("the query's answer has no column {}; it has {}", body.subject_column, columns.join(", ")),
        ));
    }
    if let Some(t) = &body.message {
        for p in crate::push::placeholders(t) {
            if !columns.contains(&p) {
                return Err(ApiError::invalid("message", format!("{{{{{p}}}}} is not a column of the query's answer")));
            }
        }
    }
    let id = format!("rule_{}", hex::encode(rand::random::<[u8; 8]>()));
    let rule = Rule {
        id: id.clone(),
        owner: caller.principal.id.clone(),
        department: caller.principal.department.clone(),
        def: RuleDef {
            name,
            sql: body.sql,
            subject_column: body.subject_column,
            message: body.message,
            trigger: body.trigger,
            webhook_url: body.webhook.as_ref().map(|w| w.url.clone()),
            purpose: body.purpose,
            backfill: body.backfill.unwrap_or(true),
            max_per_subject: body.max_per_subject,
        },
        created_at: Utc::now(),
    };
    let sealed = body.webhook.as_ref().map(|w| crate::push::seal(state.secret.key(), &id, &w.secret));
    let rule = state.push.store.create_rule(rule, sealed).await.map_err(|e| match e {
        crate::push::store::StoreError::Conflict(_) => ApiError::new(super::error::CONFLICT, e.to_string()),
        other => ApiError::internal(&other),
    })?;
    caller.audit.note(|n| n.target = Some(id.clone()));
    state.push.changed();
    Ok((StatusCode::CREATED, axum::Json(view(rule, RuleState::default()))))
}

/// Paging of rule lists.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// The caller's rules, by id.
#[utoipa::path(get, operation_id = "list_rules", path = "/api/v1/push/rules", tag = "push", params(ListParams),
    responses((status = 200, description = "OK", body = Object)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<ListParams>,
) -> ApiResult<axum::Json<Page<RuleView>>> {
    let page = super::extract::page_request(p.limit, p.page_token)?;
    let rules = state.push.store.rules(Some(caller.principal.id.clone())).await.map_err(|e| ApiError::internal(&e))?;
    let items: Vec<RuleView> = rules.into_iter().map(|(r, s, _)| view(r, s)).collect();
    let offset = page.offset().map_err(|_| ApiError::invalid("page_token", "not a token of this list"))?;
    let items: Vec<RuleView> = items.into_iter().skip(offset).take(page.limit + 1).collect();
    Ok(axum::Json(page.page(items).map_err(|_| ApiError::invalid("page_token", "not a token of this list"))?))
}

/// One of the caller's rules.
#[utoipa::path(get, operation_id = "get_rule", path = "/api/v1/push/rules/{id}", tag = "push", params(("id" = String, Path)),
    responses(
        (status = 200, description = "OK", body = RuleView),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RuleView>> {
    let (rule, rule_state) = own_rule(&state, &caller, &id).await?;
    Ok(axum::Json(view(rule, rule_state)))
}

/// Deletes a rule: it is evaluated no more and its pending deliveries are cancelled.
#[utoipa::path(delete, operation_id = "delete_rule", path = "/api/v1/push/rules/{id}", tag = "push", params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    own_rule(&state, &caller, &id).await?;
    caller.audit.note(|n| n.target = Some(id.clone()));
    let lock = state.push.lock(&id);
    let _guard = lock.lock().await;
    state.push.store.delete_rule(&id, Utc::now()).await.map_err(|e| ApiError::internal(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// What evaluating a rule by hand did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunResult {
    /// The rule.
    pub rule: String,
    /// The evaluation.
    pub evaluation: Evaluated,
}

/// Evaluates a rule now, as its owner; answers once the events are in the outbox.
#[utoipa::path(post, operation_id = "run_rule", path = "/api/v1/push/rules/{id}/run", tag = "push", params(("id" = String, Path)),
    responses(
        (status = 200, description = "Evaluated", body = RunResult),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn run(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RunResult>> {
    own_rule(&state, &caller, &id).await?;
    caller.audit.note(|n| n.target = Some(id.clone()));
    let evaluation = crate::push::eval::evaluate(&state, &id, crate::push::eval::Reason::Run).await?;
    Ok(axum::Json(RunResult { rule: id, evaluation }))
}

/// Paging of events and deliveries.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Only events after this event id (the last one pulled).
    pub after: Option<String>,
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// Where a list continues: after the event named by `after` or by the page token.
async fn cursor(state: &AppState, rule: &str, after: Option<&str>) -> ApiResult<i64> {
    match after {
        None => Ok(0),
        Some(id) => state
            .push
            .store
            .event_seq(rule, id)
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(|| ApiError::invalid("after", format!("the rule has no event {id}"))),
    }
}

/// The rule's events, oldest first: pull them with `?after=` the last id seen.
#[utoipa::path(get, operation_id = "rule_events", path = "/api/v1/push/rules/{id}/events", tag = "push",
    params(("id" = String, Path), EventParams),
    responses(
        (status = 200, description = "Items: the events as webhooks carry them, with `delivery` (state)", body = Object),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(p): Query<EventParams>,
) -> ApiResult<axum::Json<Page<serde_json::Value>>> {
    let (rule, _) = own_rule(&state, &caller, &id).await?;
    let limit = super::extract::page_request(p.limit, None)?.limit;
    let after = cursor(&state, &id, p.page_token.as_deref().or(p.after.as_deref())).await?;
    let mut rows = state.push.store.events(&id, after, limit + 1).await.map_err(|e| ApiError::internal(&e))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let mut items = Vec::with_capacity(rows.len());
    let mut subjects = Vec::with_capacity(rows.len());
    let mut datasets = std::collections::BTreeSet::new();
    for r in rows {
        let mut v: serde_json::Value = serde_json::from_str(&r.body).map_err(|e| ApiError::internal(&e))?;
        if let Some(s) = v["subject"].as_str() {
            subjects.push(s.to_string());
        }
        if let Some(vs) = v["versions"].as_object() {
            datasets.extend(vs.keys().cloned());
        }
        v["delivery"] = r.delivery.map(serde_json::Value::String).unwrap_or(serde_json::Value::Null);
        items.push(v);
    }
    let next_page_token = if more { items.last().and_then(|v| v["id"].as_str()).map(str::to_string) } else { None };
    subjects.sort();
    subjects.dedup();
    caller.audit.note(|n| {
        n.target = Some(id.clone());
        n.purpose = Some(rule.def.purpose.clone());
        n.rows = Some(items.len() as u64);
        n.subjects = subjects;
        n.datasets = datasets.into_iter().collect();
    });
    Ok(axum::Json(Page { items, next_page_token }))
}

/// Filters of the delivery list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Only deliveries in this state: `pending`, `delivered`, `dead` or `cancelled`.
    pub status: Option<String>,
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// The delivery of each of the rule's events, oldest first.
#[utoipa::path(get, operation_id = "rule_deliveries", path = "/api/v1/push/rules/{id}/deliveries", tag = "push",
    params(("id" = String, Path), DeliveryParams),
    responses(
        (status = 200, description = "Items: event id, attempts, last status, next attempt, dead-lettered", body = Object),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(p): Query<DeliveryParams>,
) -> ApiResult<axum::Json<Page<Delivery>>> {
    own_rule(&state, &caller, &id).await?;
    if let Some(s) = &p.status
        && !["pending", "delivered", "dead", "cancelled"].contains(&s.as_str())
    {
        return Err(ApiError::invalid("status", "must be pending, delivered, dead or cancelled"));
    }
    let limit = super::extract::page_request(p.limit, None)?.limit;
    let after = cursor(&state, &id, p.page_token.as_deref()).await?;
    let mut rows =
        state.push.store.deliveries(&id, p.status, after, limit + 1).await.map_err(|e| ApiError::internal(&e))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_page_token = if more { rows.last().map(|(_, d)| d.event.clone()) } else { None };
    Ok(axum::Json(Page { items: rows.into_iter().map(|(_, d)| d).collect(), next_page_token }))
}

/// Puts a dead-lettered delivery back in the queue, due now.
#[utoipa::path(post, operation_id = "retry_delivery", path = "/api/v1/push/rules/{id}/deliveries/{event}/retry", tag = "push",
    params(("id" = String, Path), ("event" = String, Path)),
    responses(
        (status = 200, description = "Queued again", body = Delivery),
        (status = 404, description = "No such rule, or no dead delivery of that event", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, event)): Path<(String, String)>,
) -> ApiResult<axum::Json<Delivery>> {
    own_rule(&state, &caller, &id).await?;
    caller.audit.note(|n| n.target = Some(event.clone()));
    if !state.push.store.retry(&id, &event, Utc::now()).await.map_err(|e| ApiError::internal(&e))? {
        return Err(ApiError::not_found("dead delivery", &event));
    }
    state.push.deliver.notify_one();
    let seq = cursor(&state, &id, Some(&event)).await?;
    let mut rows = state.push.store.deliveries(&id, None, seq - 1, 1).await.map_err(|e| ApiError::internal(&e))?;
    rows.pop().map(|(_, d)| axum::Json(d)).ok_or_else(|| ApiError::not_found("delivery", &event))
}
