//! Evaluating rules: the governed SQL run as the rule's owner, its rows
//! staged with a fingerprint per subject and committed as events and state
//! in one transaction; and the evaluator task that runs each rule when its
//! trigger fires.
//!
//! A rule always runs with its owner's current access: the owner is read
//! afresh, disabled owners run nothing, and the session holds only what the
//! owner may read now, with its masks and row filters, so a revoked grant
//! makes the rule fail instead of matching.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::store::{Evaluated, NewEvent};
use super::{Rule, RuleState, Trigger};
use crate::api::error::{self, ApiError};
use crate::state::AppState;

/// Rows staged per SQLite transaction.
const STAGE_ROWS: usize = 8192;

/// Why an evaluation was run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A trigger dataset has a new version.
    OnChange,
    /// The schedule came round.
    Schedule,
    /// Evaluated by hand.
    Run,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::OnChange => "on_change",
            Reason::Schedule => "schedule",
            Reason::Run => "run",
        }
    }
}

/// The GDX version of each trigger dataset that has one.
pub async fn trigger_versions(state: &AppState, rule: &Rule) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if let Trigger::OnChange(datasets) = &rule.def.trigger {
        for id in datasets {
            if let Ok(d) = state.catalog.store().dataset(id).await
                && let Some(v) = d.current_version
            {
                out.insert(id.clone(), v);
            }
        }
    }
    out
}

/// Evaluates one rule now (waiting for an evaluation of it in progress).
/// A failure is recorded in the rule's state and returned.
pub async fn evaluate(state: &AppState, rule_id: &str, reason: Reason) -> Result<Evaluated, ApiError> {
    let lock = state.push.lock(rule_id);
    let _guard = lock.lock().await;
    let store = &state.push.store;
    let Some((rule, rule_state, _)) = store.rule(rule_id).await.map_err(|e| ApiError::internal(&e))? else {
        return Err(ApiError::not_found("rule", rule_id));
    };
    let seen = trigger_versions(state, &rule).await;
    let at = Utc::now();
    let started = std::time::Instant::now();
    let outcome = run(state, &rule, &rule_state, &seen, at).await;
    let mut record = crate::audit::Record {
        principal: Some(rule.owner.clone()),
        department: rule.department.clone(),
        action: "rule_eval".into(),
        sql: Some(rule.def.sql.clone()),
        purpose: Some(rule.def.purpose.clone()),
        target: Some(rule.id.clone()),
        detail: Some(reason.as_str().into()),
        ..crate::audit::Record::default()
    };
    match outcome {
        Ok((evaluated, versions)) => {
            tracing::info!(rule = %rule.id, reason = reason.as_str(), matched = evaluated.matched, events = evaluated.events,
                ms = started.elapsed().as_millis() as u64, "rule evaluated");
            record.outcome = "ok".into();
            record.datasets = versions.keys().cloned().collect();
            record.versions = versions;
            record.rows = Some(evaluated.events);
            state.audit.append_detached(record);
            if evaluated.events > 0 {
                state.push.deliver.notify_one();
            }
            Ok(evaluated)
        }
        Err(e) => {
            tracing::warn!(rule = %rule.id, reason = reason.as_str(), error = e.detail(), "rule evaluation failed");
            record.outcome = "failed".into();
            record.detail = Some(format!("{}: {}", reason.as_str(), e.detail()));
            state.audit.append_detached(record);
            store
                .record_failure(&rule.id, seen, at, e.detail().to_string())
                .await
                .map_err(|e| ApiError::internal(&e))?;
            Err(e)
        }
    }
}

/// Runs the rule's SQL as its owner, stages and commits; the outcome and the versions read.
async fn run(
    state: &AppState,
    rule: &Rule,
    rule_state: &RuleState,
    seen: &BTreeMap<String, i64>,
    at: DateTime<Utc>,
) -> Result<(Evaluated, BTreeMap<String, i64>), ApiError> {
    let owner = state
        .catalog
        .store()
        .principal(&rule.owner)
        .await
        .map_err(|_| ApiError::new(error::ACCESS_DENIED, "the rule's owner no longer exists"))?;
    if owner.disabled {
        return Err(ApiError::new(error::ACCESS_DENIED, "the rule's owner is disabled"));
    }
    let timeout = std::time::Duration::from_secs(state.config.query_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + timeout;
    let too_long = || {
        ApiError::new(
            error::UNAVAILABLE,
            format!("the rule's query ran longer than {} s and was stopped", timeout.as_secs()),
        )
    };
    let as_of = HashMap::new();
    let sources = crate::api::query::Sources { only: None, as_of: &as_of, audit: None, unversioned_empty: true };
    let (df, versions) =
        tokio::time::timeout_at(deadline, crate::api::query::governed_frame(state, &owner, &rule.def.sql, sources))
            .await
            .map_err(|_| too_long())??;
    let names: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    let subject_at = names.iter().position(|n| n == &rule.def.subject_column).ok_or_else(|| {
        ApiError::new(
            error::INVALID_QUERY,
            format!("the rule's query has no column {} (its subject column)", rule.def.subject_column),
        )
    })?;
    let mut stream = tokio::time::timeout_at(deadline, crate::query::execute(df))
        .await
        .map_err(|_| too_long())?
        .map_err(crate::api::query::query_error)?;
    let store = state.push.store.clone();
    let mut staging = tokio::task::spawn_blocking(move || store.staging())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    let mut pending = Vec::with_capacity(STAGE_ROWS);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| too_long())?;
        let batch = match next {
            Some(b) => Some(b.map_err(crate::api::query::query_error)?),
            None => None,
        };
        if let Some(batch) = &batch {
            for row in crate::api::query::json_rows(batch).map_err(|e| ApiError::internal(&e))? {
                if let Some(staged) = stage_row(&names, subject_at, row) {
                    pending.push(staged);
                }
            }
        }
        if pending.len() >= STAGE_ROWS || (batch.is_none() && !pending.is_empty()) {
            let rows = std::mem::take(&mut pending);
            staging = tokio::task::spawn_blocking(move || staging.stage(&rows).map(|()| staging))
                .await
                .map_err(|e| ApiError::internal(&e))?
                .map_err(|e| ApiError::internal(&e))?;
        }
        if batch.is_none() {
            break;
        }
    }
    // The first evaluation of a rule without backfill only learns what matches.
    let emit = rule.def.backfill || rule_state.matched.is_some();
    let day = at.with_timezone(&super::cron::shanghai()).format("%Y-%m-%d").to_string();
    let (rule_id, template, deliver, max) =
        (rule.id.clone(), rule.def.message.clone(), rule.def.webhook_url.is_some(), rule.def.max_per_subject);
    let versions_json = serde_json::to_string(&versions).map_err(|e| ApiError::internal(&e))?;
    let created = crate::push::store::ts(&at);
    let seen = seen.clone();
    let evaluated = tokio::task::spawn_blocking(move || {
        staging.commit(&rule_id, &seen, at, &day, deliver, max, |subject, data| {
            if !emit {
                return None;
            }
            let id = format!("evt_{}", hex::encode(rand::random::<[u8; 12]>()));
            let message = template.as_deref().map(|t| match serde_json::from_str(data) {
                Ok(serde_json::Value::Object(row)) => super::render(t, &row),
                _ => t.to_string(),
            });
            let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
            let body = format!(
                "{{\"id\":{},\"rule\":{},\"subject\":{},\"data\":{},\"message\":{},\"versions\":{},\"created_at\":{}}}",
                q(&id),
                q(&rule_id),
                q(subject),
                data,
                message.as_deref().map(q).unwrap_or_else(|| "null".into()),
                versions_json,
                q(&created),
            );
            Some(NewEvent { id, body })
        })
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    Ok((evaluated, versions))
}

/// A row as staged: its subject (a null subject names nobody), the
/// fingerprint of the row and the row as a JSON object.
fn stage_row(names: &[String], subject_at: usize, row: Vec<serde_json::Value>) -> Option<(String, [u8; 16], String)> {
    let subject = match &row[subject_at] {
        serde_json::Value::Null => return None,
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let object: serde_json::Map<String, serde_json::Value> = names.iter().cloned().zip(row).collect();
    let data = serde_json::Value::Object(object).to_string();
    let digest = Sha256::digest(data.as_bytes());
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&digest[..16]);
    Some((subject, fp, data))
}

/// Whether a rule is due now, and if not, when it next will be (schedules only).
async fn due(
    state: &AppState,
    rule: &Rule,
    rule_state: &RuleState,
    now: DateTime<Utc>,
) -> (Option<Reason>, Option<DateTime<Utc>>) {
    match &rule.def.trigger {
        Trigger::OnChange(_) => {
            let current = trigger_versions(state, rule).await;
            ((current != rule_state.seen).then_some(Reason::OnChange), None)
        }
        Trigger::Schedule(text) => {
            let Ok(schedule) = super::cron::Schedule::parse(text) else { return (None, None) };
            let from = rule_state.evaluated_at.unwrap_or(rule.created_at);
            match schedule.next_after(from) {
                Some(t) if t <= now => (Some(Reason::Schedule), schedule.next_after(now)),
                next => (None, next),
            }
        }
    }
}

/// Longest the evaluator sleeps without a wake-up.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The evaluator: runs every rule whose trigger fired, then sleeps until a
/// dataset changes, a rule is added or a schedule comes round. Datasets are
/// compared with what each rule last saw, so commits made while the server
/// was down are evaluated after a restart.
pub async fn evaluator(state: AppState) {
    loop {
        let now = Utc::now();
        let mut wake = tokio::time::Instant::now() + IDLE;
        match state.push.store.rules(None).await {
            Ok(rules) => {
                for (rule, rule_state, _) in rules {
                    let (reason, next) = due(&state, &rule, &rule_state, now).await;
                    if let Some(reason) = reason {
                        // A failure is in the rule's state and the log already.
                        let _ = evaluate(&state, &rule.id, reason).await;
                    }
                    if let Some(next) = next {
                        let after = (next - Utc::now()).to_std().unwrap_or_default();
                        wake = wake.min(tokio::time::Instant::now() + after);
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "push rules cannot be read"),
        }
        tokio::select! {
            _ = state.push.evaluate.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}
