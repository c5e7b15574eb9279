//! Reading the log: filtered pages of records and usage counts, on
//! read-only connections kept in a small pool, run on blocking threads.
//!
//! The records up to the index's mark are found through the index
//! ([`super::index`]), by SQL; those after it (at most a flush behind while
//! the server runs, all of them when there is no index) are decoded and
//! filtered here, by the same rules ([`Matcher`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};

use super::{AuditError, READ_ACTIONS, Record, format_time, index, provider_of, schema};

/// Idle read connections kept for reuse.
const POOL: usize = 4;

/// Which records to list; every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    /// The acting principal.
    pub principal: Option<String>,
    /// The department of the acting principal.
    pub department: Option<String>,
    /// A dataset the record names.
    pub dataset: Option<String>,
    /// The action.
    pub action: Option<String>,
    /// A subject hash the record names (already hashed with [`super::AuditLog::subject_hash`]).
    pub subject: Option<String>,
    /// Records at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Records before this time.
    pub to: Option<DateTime<Utc>>,
}

/// Whose records a reader may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every record (auditors of the supervising departments).
    All,
    /// Records whose department is one of these, or that name a dataset one
    /// of these departments provides.
    Departments(BTreeSet<String>),
}

/// Successful reads of one dataset by one consumer department.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The dataset.
    pub dataset: String,
    /// The consumer department (`None` for principals of no department).
    pub department: Option<String>,
    /// How many reads.
    pub reads: u64,
    /// Rows returned or pushed by those reads (a read of several datasets
    /// counts its rows for each).
    pub rows: u64,
    /// The last of those reads.
    pub last_at: DateTime<Utc>,
}

/// Runs `f` on a blocking thread.
pub(super) async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuditError::Read { path: path.to_path_buf(), reason: e.to_string() })?
}

/// Read-only connections to one audit log.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// An SQL statement and its parameters.
#[derive(Debug, Default)]
pub(super) struct Sql {
    pub text: String,
    pub params: Vec<Value>,
}

impl Sql {
    fn bind(&mut self, value: impl Into<Value>) -> &'static str {
        self.params.push(value.into());
        "?"
    }

    fn in_list<'a>(&mut self, values: impl IntoIterator<Item = &'a String>) -> String {
        let marks: Vec<&str> = values.into_iter().map(|v| self.bind(v.clone())).collect();
        marks.join(", ")
    }
}

/// Conditions for `from <= time < to`. Times never decrease along the log,
/// so the window is also a seq range, found on the time index (the time
/// conditions stay, for exactness).
fn time_window(sql: &mut Sql, seq: &str, from: Option<&DateTime<Utc>>, to: Option<&DateTime<Utc>>) -> Vec<String> {
    let mut conds = Vec::new();
    if let Some(t) = from {
        let (a, b) = (sql.bind(format_time(t)), sql.bind(format_time(t)));
        conds.push(format!(
            "i.at >= {a} AND {seq} >= coalesce((SELECT seq FROM {x}.audit_index WHERE at >= {b} ORDER BY at, seq LIMIT 1), {})",
            i64::MAX,
            x = index::SCHEMA_NAME
        ));
    }
    if let Some(t) = to {
        let (a, b) = (sql.bind(format_time(t)), sql.bind(format_time(t)));
        conds.push(format!(
            "i.at < {a} AND {seq} <= coalesce((SELECT seq FROM {x}.audit_index WHERE at < {b} ORDER BY at DESC, seq DESC LIMIT 1), 0)",
            x = index::SCHEMA_NAME
        ));
    }
    conds
}

/// The seqs of the indexed records naming `subject`. The index is searched
/// generation by generation, and what it finds is checked against the
/// record (its key is a prefix of a hash of the subject).
fn subject_seqs(sql: &mut Sql, subject: &str) -> String {
    let x = index::SCHEMA_NAME;
    let key = sql.bind(index::key_of(subject));
    let value = sql.bind(subject.to_string());
    format!(
        "WITH RECURSIVE gens(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM gens \
         WHERE n < (SELECT max(gen) FROM {x}.subject_refs)) \
         SELECT r.seq FROM gens g CROSS JOIN {x}.subject_refs r CROSS JOIN audit_log t \
         WHERE r.gen = g.n AND r.key = {key} AND t.seq = r.seq \
         AND EXISTS (SELECT 1 FROM json_each(t.record, '$.subjects') j WHERE j.value = {value})"
    )
}

/// The indexed records matching `filter` in `scope` with
/// `after < seq <= upto`, by seq, at most `limit`: `SELECT seq, record`.
/// `upto` is at most the index's mark.
fn select_records(filter: &Filter, scope: &Scope, after: u64, upto: u64, limit: usize) -> Sql {
    let x = index::SCHEMA_NAME;
    let mut sql = Sql::default();
    let mut conds: Vec<String> = Vec::new();
    // Drive the scan from the most selective index: a subject's or dataset's
    // references are in seq order, so a page costs its own size.
    let (from, seq) = if let Some(s) = &filter.subject {
        let seqs = subject_seqs(&mut sql, s);
        if let Some(d) = &filter.dataset {
            conds.push(format!(
                "EXISTS (SELECT 1 FROM {x}.audit_refs r WHERE r.kind = 'dataset' AND r.value = {} AND r.seq = d.seq)",
                sql.bind(d.clone())
            ));
        }
        (format!("({seqs}) d JOIN {x}.audit_index i ON i.seq = d.seq JOIN audit_log l ON l.seq = d.seq"), "d.seq")
    } else if let Some(d) = &filter.dataset {
        conds.push(format!("d.kind = 'dataset' AND d.value = {}", sql.bind(d.clone())));
        (format!("{x}.audit_refs d JOIN {x}.audit_index i ON i.seq = d.seq JOIN audit_log l ON l.seq = d.seq"), "d.seq")
    } else if filter == &Filter::default() && scope == &Scope::All {
        ("audit_log l".to_string(), "l.seq")
    } else {
        (format!("{x}.audit_index i JOIN audit_log l ON l.seq = i.seq"), "i.seq")
    };
    conds.push(format!("{seq} > {}", sql.bind(after as i64)));
    conds.push(format!("{seq} <= {}", sql.bind(upto as i64)));
    for (column, value) in
        [("principal", &filter.principal), ("department", &filter.department), ("action", &filter.action)]
    {
        if let Some(v) = value {
            conds.push(format!("i.{column} = {}", sql.bind(v.clone())));
        }
    }
    conds.extend(time_window(&mut sql, seq, filter.from.as_ref(), filter.to.as_ref()));
    if let Scope::Departments(set) = scope {
        if set.is_empty() {
            conds.push("0".into());
        } else {
            let own = sql.in_list(set);
            let provided = sql.in_list(set);
            conds.push(format!(
                "(i.department IN ({own}) OR EXISTS (SELECT 1 FROM {x}.audit_refs p \
                 WHERE p.kind = 'provider' AND p.value IN ({provided}) AND p.seq = {seq}))"
            ));
        }
    }
    let limit = sql.bind(i64::try_from(limit).unwrap_or(i64::MAX));
    sql.text = format!("SELECT l.seq, l.record FROM {from} WHERE {} ORDER BY {seq} LIMIT {limit}", conds.join(" AND "));
    sql
}

/// The usage counts of the indexed records up to `mark`:
/// `SELECT dataset, department, reads, rows, last at`.
fn usage_sql(
    dataset: Option<&str>,
    from: Option<&DateTime<Utc>>,
    to: Option<&DateTime<Utc>>,
    scope: &Scope,
    mark: u64,
) -> Sql {
    let x = index::SCHEMA_NAME;
    let mut sql = Sql::default();
    let actions: Vec<String> = READ_ACTIONS.iter().map(|a| a.to_string()).collect();
    let actions = sql.in_list(&actions);
    let mut conds =
        vec!["r.kind = 'dataset'".to_string(), "i.outcome = 'ok'".into(), format!("i.action IN ({actions})")];
    if let Some(d) = dataset {
        conds.push(format!("r.value = {}", sql.bind(d.to_string())));
    }
    conds.extend(time_window(&mut sql, "r.seq", from, to));
    conds.push(format!("r.seq <= {}", sql.bind(mark as i64)));
    if let Scope::Departments(set) = scope {
        if set.is_empty() {
            conds.push("0".into());
        } else {
            let own = sql.in_list(set);
            let provided = sql.in_list(set);
            conds.push(format!(
                "(i.department IN ({own}) OR (CASE WHEN instr(r.value, '.') > 0 \
             THEN substr(r.value, 1, instr(r.value, '.') - 1) ELSE r.value END) IN ({provided}))"
            ));
        }
    }
    sql.text = format!(
        "SELECT r.value, i.department, count(*), coalesce(sum(i.rows), 0), max(i.at) \
         FROM {x}.audit_refs r JOIN {x}.audit_index i ON i.seq = r.seq WHERE {} \
         GROUP BY r.value, i.department",
        conds.join(" AND ")
    );
    sql
}

/// [`Filter`] and [`Scope`] applied to a decoded record, as the index
/// applies them to its rows.
struct Matcher<'a> {
    filter: &'a Filter,
    scope: &'a Scope,
    from: Option<String>,
    to: Option<String>,
}

impl<'a> Matcher<'a> {
    fn new(filter: &'a Filter, scope: &'a Scope) -> Self {
        Self { filter, scope, from: filter.from.as_ref().map(format_time), to: filter.to.as_ref().map(format_time) }
    }

    /// Whether a record at `at` (as stored) is inside the time window.
    fn in_window(&self, at: &str) -> bool {
        self.from.as_deref().is_none_or(|from| at >= from) && self.to.as_deref().is_none_or(|to| at < to)
    }

    /// Whether a record at `at` is past the end of the window (so are all
    /// the records after it: times never decrease along the log).
    fn past(&self, at: &str) -> bool {
        self.to.as_deref().is_some_and(|to| at >= to)
    }

    /// Whether a record of `department` naming `datasets` is in scope.
    fn in_scope<'d>(&self, department: Option<&String>, mut datasets: impl Iterator<Item = &'d String>) -> bool {
        match self.scope {
            Scope::All => true,
            Scope::Departments(set) => {
                department.is_some_and(|d| set.contains(d)) || datasets.any(|d| set.contains(provider_of(d)))
            }
        }
    }

    fn matches(&self, record: &Record, at: &str) -> bool {
        let f = self.filter;
        let same = |want: &Option<String>, have: &Option<String>| want.is_none() || want == have;
        same(&f.principal, &record.principal)
            && same(&f.department, &record.department)
            && f.action.as_ref().is_none_or(|a| *a == record.action)
            && f.dataset.as_ref().is_none_or(|d| record.datasets.contains(d))
            && f.subject.as_ref().is_none_or(|s| record.subjects.contains(s))
            && self.in_window(at)
            && self.in_scope(record.department.as_ref(), record.datasets.iter())
    }
}

/// The index's mark on `conn` (0 when it has no index attached).
fn mark_of(conn: &Connection) -> rusqlite::Result<u64> {
    if index::attached(conn) { index::mark(conn) } else { Ok(0) }
}

impl Reader {
    pub(super) fn new(path: PathBuf) -> Self {
        Self { path, idle: Mutex::new(Vec::new()) }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn read_error(&self, e: impl std::fmt::Display) -> AuditError {
        AuditError::Read { path: self.path.clone(), reason: e.to_string() }
    }

    /// Runs `f` on a pooled read-only connection.
    pub(super) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, AuditError>) -> Result<T, AuditError> {
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => schema::open_reader(&self.path)?,
        };
        let result = f(&conn);
        // A connection is returned only outside a transaction (a failed
        // statement inside one would otherwise leave it open).
        if conn.is_autocommit() {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < POOL {
                idle.push(conn);
            }
        }
        result
    }

    /// Runs a [`select_records`] statement and decodes the records, each with
    /// the seq of its row.
    fn records(&self, conn: &Connection, sql: &Sql) -> Result<Vec<(u64, Record)>, AuditError> {
        let mut stmt = conn.prepare_cached(&sql.text).map_err(|e| self.read_error(e))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(&sql.params)).map_err(|e| self.read_error(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.read_error(e))? {
            let seq: u64 = row.get(0).map_err(|e| self.read_error(e))?;
            let text: String = row.get(1).map_err(|e| self.read_error(e))?;
            out.push((seq, self.decode(seq, &text)?));
        }
        Ok(out)
    }

    fn decode(&self, seq: u64, text: &str) -> Result<Record, AuditError> {
        serde_json::from_str(text).map_err(|e| AuditError::Corrupt {
            path: self.path.clone(),
            seq,
            reason: e.to_string(),
        })
    }

    /// Calls `f` with each record of the log after `after`, up to `upto`, in
    /// seq order, until it answers false.
    fn each_after(
        &self,
        conn: &Connection,
        after: u64,
        upto: Option<u64>,
        mut f: impl FnMut(u64, Record) -> bool,
    ) -> Result<(), AuditError> {
        let upto = upto.map_or(i64::MAX, |u| i64::try_from(u).unwrap_or(i64::MAX));
        let mut stmt = conn
            .prepare_cached("SELECT seq, record FROM audit_log WHERE seq > ?1 AND seq <= ?2 ORDER BY seq")
            .map_err(|e| self.read_error(e))?;
        let mut rows = stmt.query(rusqlite::params![after as i64, upto]).map_err(|e| self.read_error(e))?;
        while let Some(row) = rows.next().map_err(|e| self.read_error(e))? {
            let seq: u64 = row.get(0).map_err(|e| self.read_error(e))?;
            let text: String = row.get(1).map_err(|e| self.read_error(e))?;
            if !f(seq, self.decode(seq, &text)?) {
                break;
            }
        }
        Ok(())
    }

    /// The records matching `filter` in `scope` with `after < seq <= upto`,
    /// by seq, at most `limit`, each with its seq: through the index up to
    /// its mark, by their JSON after it. In one read transaction, so that
    /// the index and the log are read as of one moment.
    pub(super) fn page(
        &self,
        conn: &Connection,
        filter: &Filter,
        scope: &Scope,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Record)>, AuditError> {
        let tx = conn.unchecked_transaction().map_err(|e| self.read_error(e))?;
        let mark = mark_of(&tx).map_err(|e| self.read_error(e))?;
        let mut out = Vec::new();
        if after < mark && limit > 0 {
            let sql = select_records(filter, scope, after, upto.map_or(mark, |u| u.min(mark)), limit);
            out = self.records(&tx, &sql)?;
        }
        if out.len() < limit && upto.is_none_or(|u| after.max(mark) < u) {
            let matcher = Matcher::new(filter, scope);
            self.each_after(&tx, after.max(mark), upto, |seq, record| {
                let at = format_time(&record.time);
                if matcher.past(&at) {
                    return false;
                }
                if matcher.matches(&record, &at) {
                    out.push((seq, record));
                }
                out.len() < limit
            })?;
        }
        Ok(out)
    }

    pub(super) fn list(
        &self,
        filter: &Filter,
        scope: &Scope,
        limit: usize,
        after: Option<u64>,
    ) -> Result<Vec<Record>, AuditError> {
        self.with(|conn| {
            Ok(self.page(conn, filter, scope, after.unwrap_or(0), None, limit)?.into_iter().map(|(_, r)| r).collect())
        })
    }

    pub(super) fn usage(
        &self,
        dataset: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        scope: &Scope,
    ) -> Result<Vec<Usage>, AuditError> {
        let window = Filter { from, to, ..Filter::default() };
        let matcher = Matcher::new(&window, scope);
        self.with(|conn| {
            let tx = conn.unchecked_transaction().map_err(|e| self.read_error(e))?;
            let mark = mark_of(&tx).map_err(|e| self.read_error(e))?;
            // (dataset, department) → (reads, rows, the last read's time)
            let mut totals: BTreeMap<(String, Option<String>), (u64, u64, String)> = BTreeMap::new();
            if mark > 0 {
                let sql = usage_sql(dataset, from.as_ref(), to.as_ref(), scope, mark);
                let mut stmt = tx.prepare_cached(&sql.text).map_err(|e| self.read_error(e))?;
                let mut rows = stmt.query(rusqlite::params_from_iter(&sql.params)).map_err(|e| self.read_error(e))?;
                while let Some(row) = rows.next().map_err(|e| self.read_error(e))? {
                    let get = |i: usize| row.get_ref(i).map_err(|e| self.read_error(e));
                    let key = (
                        get(0)?.as_str().map_err(|e| self.read_error(e))?.to_string(),
                        get(1)?.as_str_or_null().map_err(|e| self.read_error(e))?.map(str::to_string),
                    );
                    let reads: i64 = get(2)?.as_i64().map_err(|e| self.read_error(e))?;
                    let rows_read: i64 = get(3)?.as_i64().map_err(|e| self.read_error(e))?;
                    let at = get(4)?.as_str().map_err(|e| self.read_error(e))?.to_string();
                    totals.insert(key, (reads.max(0) as u64, rows_read.max(0) as u64, at));
                }
            }
            self.each_after(&tx, mark, None, |_, record| {
                let at = format_time(&record.time);
                if matcher.past(&at) {
                    return false;
                }
                if record.outcome != "ok" || !READ_ACTIONS.contains(&record.action.as_str()) || !matcher.in_window(&at)
                {
                    return true;
                }
                let named: BTreeSet<&String> = record.datasets.iter().collect();
                for d in named {
                    if dataset.is_some_and(|want| want != d.as_str())
                        || !matcher.in_scope(record.department.as_ref(), std::iter::once(d))
                    {
                        continue;
                    }
                    let entry = totals.entry((d.clone(), record.department.clone())).or_insert((0, 0, String::new()));
                    entry.0 += 1;
                    entry.1 += record.rows.unwrap_or(0);
                    if at > entry.2 {
                        entry.2.clone_from(&at);
                    }
                }
                true
            })?;
            totals
                .into_iter()
                .map(|((dataset, department), (reads, rows, at))| {
                    let last_at = DateTime::parse_from_rfc3339(&at)
                        .map_err(|e| self.read_error(format!("index time {at:?}: {e}")))?
                        .with_timezone(&Utc);
                    Ok(Usage { dataset, department, reads, rows, last_at })
                })
                .collect()
        })
    }
}
