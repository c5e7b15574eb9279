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

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::catalog::TableProvider;
use datafusion::logical_expr::LogicalPlan;
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
    let outcome = run(state, &rule, &rule_state, &seen, at, reason).await;
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
    reason: Reason,
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
    let plan = |changes| frame(state, &owner, &rule.def.sql, changes);
    let started = std::time::Instant::now();
    let (df, versions) = tokio::time::timeout_at(deadline, plan(None)).await.map_err(|_| too_long())??;
    let planned = started.elapsed();
    let names: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
    let subject_at = names.iter().position(|n| n == &rule.def.subject_column).ok_or_else(|| {
        ApiError::new(
            error::INVALID_QUERY,
            format!("the rule's query has no column {} (its subject column)", rule.def.subject_column),
        )
    })?;
    let store = state.push.store.clone();
    let mut staging = tokio::task::spawn_blocking(move || store.staging())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))?;
    // A rule over one dataset, row by row, reads only the rows changed since
    // its last evaluation: as they are now, and as they were (whose subjects
    // may no longer match).
    let changes = match (reason, rule_state.matched) {
        (Reason::OnChange, Some(matched)) if rule_state.status.as_deref() == Some("ok") => {
            match changed_rows(state, rule, rule_state, df.logical_plan(), &versions).await {
                Ok(c) => Some((c, matched)),
                Err(why) => {
                    tracing::debug!(rule = %rule.id, why, "rule reads all rows");
                    None
                }
            }
        }
        _ => None,
    };
    let changes_found = started.elapsed();
    let mut mode = "full";
    if let Some(((dataset, before, after), matched)) = changes {
        let (now_df, _) =
            tokio::time::timeout_at(deadline, plan(Some((&dataset, after)))).await.map_err(|_| too_long())??;
        staging = stage(now_df, &names, subject_at, staging, deadline, &too_long).await?;
        let (was_df, _) =
            tokio::time::timeout_at(deadline, plan(Some((&dataset, before)))).await.map_err(|_| too_long())??;
        staging = candidates(was_df, subject_at, staging, deadline, &too_long).await?;
        staging.partial(matched);
        mode = "changes";
    } else {
        staging = stage(df, &names, subject_at, staging, deadline, &too_long).await?;
    }
    let rows_read = started.elapsed();
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
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    tracing::debug!(rule = %rule.id, mode, planned_ms = ms(planned), changes_ms = ms(changes_found - planned),
        read_ms = ms(rows_read - changes_found), committed_ms = ms(started.elapsed() - rows_read), "rule rows read");
    Ok((evaluated, versions))
}

/// Plans `sql` as `owner`, reading `changes` instead of its dataset when given.
async fn frame(
    state: &AppState,
    owner: &gdx_catalog::model::Principal,
    sql: &str,
    changes: Option<(&str, Arc<dyn TableProvider>)>,
) -> Result<(datafusion::dataframe::DataFrame, BTreeMap<String, i64>), ApiError> {
    let as_of = HashMap::new();
    let sources =
        crate::api::query::Sources { only: None, as_of: &as_of, audit: None, unversioned_empty: true, changes };
    crate::api::query::governed_frame(state, owner, sql, sources).await
}

/// Starts `df`, within the evaluation's deadline.
async fn execute(
    df: datafusion::dataframe::DataFrame,
    deadline: tokio::time::Instant,
    too_long: &impl Fn() -> ApiError,
) -> Result<datafusion::execution::SendableRecordBatchStream, ApiError> {
    tokio::time::timeout_at(deadline, crate::query::execute(df))
        .await
        .map_err(|_| too_long())?
        .map_err(crate::api::query::query_error)
}

/// Streams the answer of `df` into `staging`, a subject per row.
async fn stage(
    df: datafusion::dataframe::DataFrame,
    names: &[String],
    subject_at: usize,
    mut staging: super::store::Staging,
    deadline: tokio::time::Instant,
    too_long: &impl Fn() -> ApiError,
) -> Result<super::store::Staging, ApiError> {
    let mut stream = execute(df, deadline, too_long).await?;
    let mut pending = Vec::with_capacity(STAGE_ROWS);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| too_long())?;
        let batch = match next {
            Some(b) => Some(b.map_err(crate::api::query::query_error)?),
            None => None,
        };
        if let Some(batch) = &batch {
            for row in crate::api::query::json_rows(batch).map_err(|e| ApiError::internal(&e))? {
                if let Some(staged) = stage_row(names, subject_at, row) {
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
            return Ok(staging);
        }
    }
}

/// Streams the subjects of `df`'s answer into `staging` as candidates that may no longer match.
async fn candidates(
    df: datafusion::dataframe::DataFrame,
    subject_at: usize,
    mut staging: super::store::Staging,
    deadline: tokio::time::Instant,
    too_long: &impl Fn() -> ApiError,
) -> Result<super::store::Staging, ApiError> {
    let mut stream = execute(df, deadline, too_long).await?;
    while let Some(batch) = tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| too_long())? {
        let batch = batch.map_err(crate::api::query::query_error)?;
        let subjects: Vec<String> = crate::api::query::json_rows(&batch)
            .map_err(|e| ApiError::internal(&e))?
            .into_iter()
            .filter_map(|row| match row.into_iter().nth(subject_at) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s),
                Some(other) => Some(other.to_string()),
            })
            .collect();
        staging = tokio::task::spawn_blocking(move || staging.candidates(&subjects).map(|()| staging))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::internal(&e))?;
    }
    Ok(staging)
}

/// Versions between two evaluations read from the change feed at most;
/// past that, a full evaluation.
const MAX_CHANGED_VERSIONS: i64 = 64;

/// For a rule that reads one dataset row by row (projections and filters of
/// deterministic expressions, its subject the dataset's one-column key),
/// the rows changed since the version it last saw, from Delta's change data
/// feed: `(dataset, the rows as they were, the rows as they are)`. An error
/// says why the rule reads all rows instead: joins, aggregates, sorts,
/// limits, the current date, a replace among the versions, a table without
/// the feed.
async fn changed_rows(
    state: &AppState,
    rule: &Rule,
    rule_state: &RuleState,
    plan: &LogicalPlan,
    versions: &BTreeMap<String, i64>,
) -> Result<(String, Arc<dyn TableProvider>, Arc<dyn TableProvider>), String> {
    if rule.def.max_per_subject.is_some() {
        // A change held for a later day is found again only by reading all rows.
        return Err("max_per_subject holds changes for later".into());
    }
    let (dataset, &now) =
        versions.iter().next().filter(|_| versions.len() == 1).ok_or("it reads more than one dataset")?;
    let &before = rule_state.seen.get(dataset).ok_or("no version seen before")?;
    if before < 1 || now <= before || now - before > MAX_CHANGED_VERSIONS {
        return Err(format!("versions {before} to {now}"));
    }
    let d = state.catalog.store().dataset(dataset).await.map_err(|e| e.to_string())?;
    let [key] = d.primary_key.as_slice() else { return Err("the dataset's key has several columns".into()) };
    if !row_by_row(plan, &rule.def.subject_column, key) {
        return Err("its query is not row by row over the dataset's key".into());
    }
    let store = state.catalog.store();
    let delta = |v: gdx_catalog::model::Version| v.delta_version.ok_or("a version without a Delta commit");
    let start = delta(store.version(dataset, before).await.map_err(|e| e.to_string())?)?;
    let mut end = start;
    for v in before + 1..=now {
        let version = store.version(dataset, v).await.map_err(|e| e.to_string())?;
        if !matches!(version.mode.as_str(), "append" | "upsert") {
            return Err(format!("version {v} is a {}", version.mode));
        }
        end = delta(version)?;
    }
    // Other rules over the same change may have read it already.
    let range_key = (dataset.clone(), start + 1, end);
    if let Some((was, after)) = state.push.changes.get(&range_key) {
        return Ok((dataset.clone(), was, after));
    }
    let range = |v: i64| u64::try_from(v).map_err(|e| e.to_string());
    let feed = state
        .lake
        .change_feed(&d, range(start + 1)?, range(end)?)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the table keeps no change data feed")?;
    let ctx = datafusion::execution::context::SessionContext::new();
    ctx.register_table("feed", feed).map_err(|e| e.to_string())?;
    let q = |c: &str| format!("\"{}\"", c.replace('"', "\"\""));
    let columns = d.columns.iter().map(|c| q(&c.name)).collect::<Vec<_>>().join(", ");
    // A key changed more than once counts as its last change.
    let after = ctx
        .sql(&format!(
            "SELECT {columns} FROM (SELECT {columns}, row_number() OVER (PARTITION BY {} ORDER BY _commit_version DESC) \
             AS __gdx_last FROM feed WHERE _change_type IN ('insert', 'update_postimage')) WHERE __gdx_last = 1",
            q(key)
        ))
        .await
        .map_err(|e| e.to_string())?;
    let was = ctx
        .sql(&format!("SELECT {columns} FROM feed WHERE _change_type IN ('update_preimage', 'delete')"))
        .await
        .map_err(|e| e.to_string())?;
    // Held in memory when small, for the other rules over the same change;
    // a large change is read again by each rule instead.
    let mut budget = CHANGE_CACHE_BYTES;
    if let Some(after_rows) = collect_within(after.clone(), &mut budget).await?
        && let Some(was_rows) = collect_within(was.clone(), &mut budget).await?
    {
        state.push.changes.put(range_key, was_rows.clone(), after_rows.clone());
        return Ok((dataset.clone(), was_rows, after_rows));
    }
    Ok((dataset.clone(), was.into_view(), after.into_view()))
}

/// Memory the changed rows of one version range may take to be kept for
/// the next rules.
const CHANGE_CACHE_BYTES: usize = 128 * 1024 * 1024;

/// Version ranges whose changed rows are kept.
const CHANGE_CACHE_ENTRIES: usize = 2;

/// A version range of a dataset: its id and the first and last Delta versions.
type ChangeKey = (String, i64, i64);

/// A version range's changed rows: as they were, and as they are.
type ChangedRows = (Arc<dyn TableProvider>, Arc<dyn TableProvider>);

/// The changed rows (as they were, as they are) of the last few version
/// ranges rules read.
#[derive(Default)]
pub struct ChangeCache {
    entries: std::sync::Mutex<std::collections::VecDeque<(ChangeKey, ChangedRows)>>,
}

impl std::fmt::Debug for ChangeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeCache").finish_non_exhaustive()
    }
}

impl ChangeCache {
    fn get(&self, key: &ChangeKey) -> Option<ChangedRows> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().find(|(k, _)| k == key).map(|(_, rows)| rows.clone())
    }

    fn put(&self, key: ChangeKey, was: Arc<dyn TableProvider>, after: Arc<dyn TableProvider>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| k != &key);
        if entries.len() >= CHANGE_CACHE_ENTRIES {
            entries.pop_front();
        }
        entries.push_back((key, (was, after)));
    }
}

/// The rows of `df` in memory, unless they take more than `budget` bytes
/// (which is reduced by what they take).
async fn collect_within(
    df: datafusion::dataframe::DataFrame,
    budget: &mut usize,
) -> Result<Option<Arc<dyn TableProvider>>, String> {
    let mut stream = df.execute_stream().await.map_err(|e| e.to_string())?;
    let schema = stream.schema();
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| e.to_string())?;
        let size = batch.get_array_memory_size();
        if size > *budget {
            return Ok(None);
        }
        *budget -= size;
        batches.push(batch);
    }
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(|e| e.to_string())?;
    Ok(Some(Arc::new(table)))
}

/// Whether `plan` reads one table and maps each of its rows on its own
/// (projections and filters of deterministic expressions), naming the
/// subject by the table's key column unchanged.
fn row_by_row(plan: &LogicalPlan, subject: &str, key: &str) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::{Expr, Volatility};
    let mut scans = 0;
    let mut ok = true;
    let walked = plan.apply_with_subqueries(|node| {
        match node {
            LogicalPlan::Projection(p) => {
                // Whatever is called the key must be the key.
                for (e, f) in p.expr.iter().zip(p.schema.fields()) {
                    if f.name() == key && !matches!(e.clone().unalias(), Expr::Column(c) if c.name == key) {
                        ok = false;
                    }
                }
            }
            LogicalPlan::Filter(_) | LogicalPlan::SubqueryAlias(_) => {}
            LogicalPlan::TableScan(_) => scans += 1,
            _ => ok = false,
        }
        for e in node.expressions() {
            let _ = e.apply(|x| {
                if let Expr::ScalarFunction(f) = x
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    ok = false;
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(if ok { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    let top_is_key = match plan {
        LogicalPlan::Projection(p) => p
            .expr
            .iter()
            .zip(p.schema.fields())
            .any(|(e, f)| f.name() == subject && matches!(e.clone().unalias(), Expr::Column(c) if c.name == key)),
        _ => false,
    };
    walked.is_ok() && ok && scans == 1 && top_is_key
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

/// How often settled events past their retention are removed.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Rules evaluated at once. An evaluation waits on its commits (the rule's
/// state and events, the audit record) as much as it computes, so two keep
/// the cores busier than one; each has its own query memory pool.
const EVALUATING: usize = 2;

/// Longest the evaluator sleeps without a wake-up.
const IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// The evaluator: runs every rule whose trigger fired ([`EVALUATING`] at a
/// time), then sleeps until a dataset changes, a rule is added or a
/// schedule comes round. Datasets are compared with what each rule last
/// saw, so commits made while the server was down are evaluated after a
/// restart.
pub async fn evaluator(state: AppState) {
    let mut pruned: Option<tokio::time::Instant> = None;
    loop {
        if state.config.push_retention_days > 0 && pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            pruned = Some(tokio::time::Instant::now());
            let before = Utc::now() - chrono::Duration::days(state.config.push_retention_days as i64);
            match state.push.store.prune(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "settled push events past their retention removed"),
                Err(e) => tracing::error!(error = %e, "push events cannot be pruned"),
            }
        }
        let now = Utc::now();
        let mut wake = tokio::time::Instant::now() + IDLE;
        match state.push.store.rules(None).await {
            Ok(rules) => {
                let mut fired = Vec::new();
                for (rule, rule_state, _) in rules {
                    let (reason, next) = due(&state, &rule, &rule_state, now).await;
                    if let Some(reason) = reason {
                        fired.push((rule.id, reason));
                    }
                    if let Some(next) = next {
                        let after = (next - Utc::now()).to_std().unwrap_or_default();
                        wake = wake.min(tokio::time::Instant::now() + after);
                    }
                }
                // A failure is in the rule's state and the log already.
                futures::stream::iter(fired)
                    .for_each_concurrent(EVALUATING, |(id, reason)| {
                        let state = &state;
                        async move {
                            let _ = evaluate(state, &id, reason).await;
                        }
                    })
                    .await;
            }
            Err(e) => tracing::error!(error = %e, "push rules cannot be read"),
        }
        tokio::select! {
            _ = state.push.evaluate.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn plan(sql: &str) -> LogicalPlan {
        use arrow::datatypes::{DataType, Field, Schema};
        let ctx = datafusion::execution::context::SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("v", DataType::Int64, true),
            Field::new("d", DataType::Date32, true),
        ]));
        let t = datafusion::datasource::MemTable::try_new(schema, vec![vec![]]).expect("table");
        ctx.register_table("t", Arc::new(t)).expect("register");
        ctx.register_table("u", ctx.table_provider("t").await.expect("t")).expect("register");
        ctx.sql(sql).await.expect("plan").logical_plan().clone()
    }

    #[tokio::test]
    async fn only_row_by_row_rules_over_the_key_read_changes() {
        for (sql, want) in [
            ("SELECT id, v FROM t WHERE v > 3", true),
            ("SELECT x.id AS id, v * 2 AS w FROM t x WHERE upper(id) LIKE 'A%'", true),
            ("SELECT id FROM (SELECT id, v FROM t WHERE v > 1) s WHERE v < 9", true),
            // The subject is not the key, or the key is renamed.
            ("SELECT v AS id FROM t", false),
            ("SELECT id AS k FROM t", false),
            // Time, chance, aggregates, joins, subqueries, sorts and limits see more than a row.
            ("SELECT id FROM t WHERE d > current_date", false),
            ("SELECT id FROM t WHERE random() < 0.5", false),
            ("SELECT id, count(*) FROM t GROUP BY id", false),
            ("SELECT DISTINCT id FROM t", false),
            ("SELECT t.id FROM t JOIN u ON t.id = u.id", false),
            ("SELECT id FROM t WHERE id IN (SELECT id FROM u)", false),
            ("SELECT id FROM t ORDER BY v LIMIT 10", false),
            ("SELECT id, row_number() OVER (ORDER BY v) FROM t", false),
        ] {
            assert_eq!(row_by_row(&plan(sql).await, "id", "id"), want, "{sql}");
        }
    }
}
