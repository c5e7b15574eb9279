//! Reading the log: filtered pages of records and usage counts, on
//! read-only connections kept in a small pool, run on blocking threads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{AuditError, READ_ACTIONS, Record, format_time, schema, subjects};

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
/// so the window is also a seq range, found by a binary search over seq
/// ([`first_seq_from`]); the time conditions stay, for exactness.
fn time_window(
    conn: &Connection,
    sql: &mut Sql,
    seq: &str,
    from: Option<&DateTime<Utc>>,
    to: Option<&DateTime<Utc>>,
) -> rusqlite::Result<Vec<String>> {
    let mut conds = Vec::new();
    if let Some(t) = from {
        let t = format_time(t);
        let first = first_seq_from(conn, &t)?;
        conds.push(format!("i.at >= {} AND {seq} >= {}", sql.bind(t), sql.bind(first)));
    }
    if let Some(t) = to {
        let t = format_time(t);
        let end = first_seq_from(conn, &t)?;
        conds.push(format!("i.at < {} AND {seq} < {}", sql.bind(t), sql.bind(end)));
    }
    Ok(conds)
}

/// A seq `b` such that the records before it are older than `time` (an
/// index time) and those from it on are not: times never decrease with seq,
/// so a binary search of `audit_index` by seq finds it in some 25 point
/// reads for 10 million records, with no index on the time (which every
/// commit would have to write).
pub(super) fn first_seq_from(conn: &Connection, time: &str) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare_cached("SELECT seq, at FROM audit_index WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    let last: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM audit_index", [], |r| r.get(0))?;
    // Every record at or below `lo` is older; every one at or above `hi` is not.
    let (mut lo, mut hi) = (0i64, last + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, String)> = stmt.query_row([mid], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        match row {
            Some((seq, at)) if at.as_str() < time => lo = seq,
            _ => hi = mid,
        }
    }
    Ok(hi)
}

/// The seqs of the records naming `subject`: from the subject index up to
/// its mark, and by the records' JSON after it (or throughout, when the
/// index is not `indexed`, attached). The index is searched generation by
/// generation, and what it finds is checked against the record (its key is
/// a prefix of a hash of the subject).
fn subject_seqs(sql: &mut Sql, subject: &str, indexed: bool) -> String {
    let s = subjects::SCHEMA_NAME;
    let mut text = String::new();
    let after = if indexed {
        let key = sql.bind(subjects::key_of(subject));
        let value = sql.bind(subject.to_string());
        text.push_str(&format!(
            "WITH RECURSIVE gens(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM gens \
             WHERE n < (SELECT max(gen) FROM {s}.subject_refs)) \
             SELECT r.seq FROM gens g CROSS JOIN {s}.subject_refs r CROSS JOIN audit_log t \
             WHERE r.gen = g.n AND r.key = {key} AND r.seq <= (SELECT seq FROM {s}.subject_mark) \
             AND t.seq = r.seq \
             AND EXISTS (SELECT 1 FROM json_each(t.record, '$.subjects') j WHERE j.value = {value}) UNION ALL "
        ));
        format!("(SELECT seq FROM {s}.subject_mark)")
    } else {
        "0".to_string()
    };
    let value = sql.bind(subject.to_string());
    text.push_str(&format!(
        "SELECT t.seq FROM audit_log t WHERE t.seq > {after} \
         AND EXISTS (SELECT 1 FROM json_each(t.record, '$.subjects') j WHERE j.value = {value})"
    ));
    text
}

/// The records matching `filter` in `scope` with `after < seq <= upto`, by
/// seq, at most `limit`: `SELECT seq, record`. `indexed`: whether the
/// subject index is attached.
pub(super) fn select_records(
    conn: &Connection,
    filter: &Filter,
    scope: &Scope,
    after: u64,
    upto: Option<u64>,
    limit: usize,
    indexed: bool,
) -> rusqlite::Result<Sql> {
    let mut sql = Sql::default();
    let mut conds: Vec<String> = Vec::new();
    // Drive the scan from the most selective index: a subject's or dataset's
    // references are in seq order, so a page costs its own size.
    let (from, seq) = if let Some(s) = &filter.subject {
        let seqs = subject_seqs(&mut sql, s, indexed);
        if let Some(d) = &filter.dataset {
            conds.push(format!(
                "EXISTS (SELECT 1 FROM audit_refs r WHERE r.kind = 'dataset' AND r.value = {} AND r.seq = d.seq)",
                sql.bind(d.clone())
            ));
        }
        (format!("({seqs}) d JOIN audit_index i ON i.seq = d.seq JOIN audit_log l ON l.seq = d.seq"), "d.seq")
    } else if let Some(d) = &filter.dataset {
        conds.push(format!("d.kind = 'dataset' AND d.value = {}", sql.bind(d.clone())));
        ("audit_refs d JOIN audit_index i ON i.seq = d.seq JOIN audit_log l ON l.seq = d.seq".to_string(), "d.seq")
    } else if filter == &Filter::default() && scope == &Scope::All {
        ("audit_log l".to_string(), "l.seq")
    } else {
        ("audit_index i JOIN audit_log l ON l.seq = i.seq".to_string(), "i.seq")
    };
    conds.push(format!("{seq} > {}", sql.bind(after as i64)));
    if let Some(upto) = upto {
        conds.push(format!("{seq} <= {}", sql.bind(upto as i64)));
    }
    for (column, value) in
        [("principal", &filter.principal), ("department", &filter.department), ("action", &filter.action)]
    {
        if let Some(v) = value {
            conds.push(format!("i.{column} = {}", sql.bind(v.clone())));
        }
    }
    conds.extend(time_window(conn, &mut sql, seq, filter.from.as_ref(), filter.to.as_ref())?);
    conds.extend(scope_condition(&mut sql, scope, |provided| {
        format!("EXISTS (SELECT 1 FROM audit_refs p WHERE p.kind = 'provider' AND p.value IN ({provided}) AND p.seq = {seq})")
    }));
    let limit = sql.bind(i64::try_from(limit).unwrap_or(i64::MAX));
    sql.text = format!("SELECT l.seq, l.record FROM {from} WHERE {} ORDER BY {seq} LIMIT {limit}", conds.join(" AND "));
    Ok(sql)
}

/// The condition of a departments' scope: records of the departments' own
/// principals, or concerning a dataset they provide (`provides` makes that
/// test of a bound list of departments). `None` for every record.
fn scope_condition(sql: &mut Sql, scope: &Scope, provides: impl FnOnce(&str) -> String) -> Option<String> {
    let Scope::Departments(set) = scope else { return None };
    if set.is_empty() {
        return Some("0".into());
    }
    // Bound in this order: the department list first.
    let own = sql.in_list(set);
    let provided = sql.in_list(set);
    Some(format!("(i.department IN ({own}) OR {})", provides(&provided)))
}

/// The usage counts of [`Reader::usage`]: `SELECT dataset, department,
/// reads, rows, last time`. Each dataset's references are read from the
/// reference index in seq order within the time window; without a dataset
/// the datasets are walked one by one on the same index (a seek per
/// dataset), so no index by seq alone is needed.
fn usage_sql(
    conn: &Connection,
    dataset: Option<&str>,
    from: Option<&DateTime<Utc>>,
    to: Option<&DateTime<Utc>>,
    scope: &Scope,
) -> rusqlite::Result<Sql> {
    let mut sql = Sql::default();
    // Parameters are bound in the order they appear: the datasets come first.
    let datasets = match dataset {
        Some(d) => format!("SELECT {} AS v", sql.bind(d.to_string())),
        None => "WITH RECURSIVE ds(v) AS (\
                 SELECT (SELECT min(value) FROM audit_refs WHERE kind = 'dataset') \
                 UNION ALL SELECT (SELECT min(value) FROM audit_refs WHERE kind = 'dataset' AND value > ds.v) \
                 FROM ds WHERE ds.v IS NOT NULL) SELECT v FROM ds WHERE v IS NOT NULL"
            .to_string(),
    };
    let actions: Vec<String> = READ_ACTIONS.iter().map(|a| a.to_string()).collect();
    let actions = sql.in_list(&actions);
    let mut conds =
        vec!["r.kind = 'dataset'".to_string(), "i.outcome = 'ok'".into(), format!("i.action IN ({actions})")];
    conds.extend(time_window(conn, &mut sql, "r.seq", from, to)?);
    conds.extend(scope_condition(&mut sql, scope, |provided| {
        format!(
            "(CASE WHEN instr(r.value, '.') > 0 THEN substr(r.value, 1, instr(r.value, '.') - 1) \
             ELSE r.value END) IN ({provided})"
        )
    }));
    sql.text = format!(
        "SELECT r.value, i.department, count(*), coalesce(sum(i.rows), 0), max(i.at) \
         FROM ({datasets}) d CROSS JOIN audit_refs r CROSS JOIN audit_index i \
         WHERE r.value = d.v AND i.seq = r.seq AND {} \
         GROUP BY r.value, i.department ORDER BY r.value, i.department",
        conds.join(" AND ")
    );
    Ok(sql)
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
    pub(super) fn records(&self, conn: &Connection, sql: &Sql) -> Result<Vec<(u64, Record)>, AuditError> {
        let mut stmt = conn.prepare_cached(&sql.text).map_err(|e| self.read_error(e))?;
        let mut rows = stmt.query(rusqlite::params_from_iter(&sql.params)).map_err(|e| self.read_error(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.read_error(e))? {
            let seq: u64 = row.get(0).map_err(|e| self.read_error(e))?;
            let text: String = row.get(1).map_err(|e| self.read_error(e))?;
            let record = serde_json::from_str(&text).map_err(|e| AuditError::Corrupt {
                path: self.path.clone(),
                seq,
                reason: e.to_string(),
            })?;
            out.push((seq, record));
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
            let sql = select_records(conn, filter, scope, after.unwrap_or(0), None, limit, subjects::attached(conn))
                .map_err(|e| self.read_error(e))?;
            Ok(self.records(conn, &sql)?.into_iter().map(|(_, r)| r).collect())
        })
    }

    pub(super) fn usage(
        &self,
        dataset: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        scope: &Scope,
    ) -> Result<Vec<Usage>, AuditError> {
        self.with(|conn| {
            let sql = usage_sql(conn, dataset, from.as_ref(), to.as_ref(), scope).map_err(|e| self.read_error(e))?;
            let mut stmt = conn.prepare_cached(&sql.text).map_err(|e| self.read_error(e))?;
            let mut rows = stmt.query(rusqlite::params_from_iter(&sql.params)).map_err(|e| self.read_error(e))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(|e| self.read_error(e))? {
                let at: String = row.get(4).map_err(|e| self.read_error(e))?;
                let last_at = DateTime::parse_from_rfc3339(&at)
                    .map_err(|e| self.read_error(format!("index time {at:?}: {e}")))?
                    .with_timezone(&Utc);
                out.push(Usage {
                    dataset: row.get(0).map_err(|e| self.read_error(e))?,
                    department: row.get(1).map_err(|e| self.read_error(e))?,
                    reads: row.get(2).map_err(|e| self.read_error(e))?,
                    rows: row.get(3).map_err(|e| self.read_error(e))?,
                    last_at,
                });
            }
            Ok(out)
        })
    }
}
