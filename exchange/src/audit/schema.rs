//! The tables of `audit.db` and the connections to it.
//!
//! `audit_log` holds the chain (its layout is documented in the API notes).
//! `audit_index` and `audit_refs` are derived from the records, one row per
//! record and one per dataset and provider a record names, to filter without
//! decoding JSON. `audit_checkpoints` holds one signed checkpoint of the head
//! per committed batch. `PRAGMA user_version` is the schema version. The
//! subjects a record names are indexed in a file of their own
//! ([`super::subjects`]).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::AuditError;

/// The schema version this build writes.
pub const VERSION: i64 = 3;

/// WAL pages after which the writer itself checkpoints the log, a safety
/// net: the subject indexer checkpoints it behind the writer
/// ([`super::subjects`]), so that commits do not wait for the copy into the
/// database file and its fsync.
pub const WRITER_AUTOCHECKPOINT: i64 = 16384;

/// The writer's page cache, in KiB: the paths to the right edges of its
/// B-trees stay in it from one commit to the next.
pub const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// How long a statement waits for a lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA_V1: &str = "
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE audit_index (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    principal TEXT,
    department TEXT,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rows INTEGER
);
CREATE INDEX audit_index_principal ON audit_index (principal, seq);
CREATE INDEX audit_index_department ON audit_index (department, seq);
CREATE INDEX audit_index_action ON audit_index (action, seq);
CREATE INDEX audit_index_at ON audit_index (at);
CREATE TABLE audit_refs (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (kind, value, seq)
) WITHOUT ROWID;
CREATE INDEX audit_refs_seq ON audit_refs (seq);
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    signed_at TEXT NOT NULL,
    signature TEXT NOT NULL
);
PRAGMA user_version = 1;
";

/// Version 2: subjects are indexed in their own file (rebuilt from the
/// records at start), no longer in `audit_refs`.
const SCHEMA_V2: &str = "
DELETE FROM audit_refs WHERE kind = 'subject';
PRAGMA user_version = 2;
";

/// Version 3: no index on the time (readers binary-search seq, along which
/// times never decrease) nor on the references by seq (readers seek them by
/// dataset or provider): two B-trees fewer for every commit to write.
const SCHEMA_V3: &str = "
DROP INDEX IF EXISTS audit_index_at;
DROP INDEX IF EXISTS audit_refs_seq;
PRAGMA user_version = 3;
";

fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |e| AuditError::Open { path: path.to_path_buf(), reason: e.to_string() }
}

/// The writer's connection: creates the file and the schema if absent, WAL,
/// `synchronous=FULL` (a commit is on disk when it returns).
pub fn open_writer(path: &Path) -> Result<Connection, AuditError> {
    let err = open_error(path);
    let mut conn = Connection::open(path).map_err(&err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(AuditError::Open { path: path.to_path_buf(), reason: format!("journal mode {mode}, not WAL") });
    }
    conn.pragma_update(None, "synchronous", "FULL").map_err(&err)?;
    conn.pragma_update(None, "foreign_keys", "OFF").map_err(&err)?;
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT).map_err(&err)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB).map_err(&err)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(&err)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&err)?;
    if version > VERSION {
        return Err(AuditError::Schema { path: path.to_path_buf(), found: version, known: VERSION });
    }
    for (from, migration) in [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3].into_iter().enumerate() {
        if version <= from as i64 {
            tx.execute_batch(migration).map_err(&err)?;
        }
    }
    tx.commit().map_err(&err)?;
    Ok(conn)
}

/// A read-only connection to an existing audit log with its subject index
/// attached when there is one ([`super::subjects::attach`]); never creates a
/// file.
pub fn open_reader(path: &Path) -> Result<Connection, AuditError> {
    let conn = open_log_reader(path)?;
    super::subjects::attach(&conn, path)?;
    Ok(conn)
}

/// A read-only connection to an existing audit log alone.
pub fn open_log_reader(path: &Path) -> Result<Connection, AuditError> {
    if !path.is_file() {
        return Err(AuditError::NotFound { path: path.to_path_buf() });
    }
    let err = open_error(path);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(&err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&err)?;
    match version {
        VERSION => Ok(conn),
        0 => Err(AuditError::Open { path: path.to_path_buf(), reason: "the file is not an audit log".into() }),
        found if found < VERSION => Err(AuditError::Open {
            path: path.to_path_buf(),
            reason: format!("the audit log has the older schema version {found}; `gdx serve` upgrades it"),
        }),
        found => Err(AuditError::Schema { path: path.to_path_buf(), found, known: VERSION }),
    }
}

/// The `audit_index` row of a record.
#[derive(Debug, PartialEq)]
pub struct IndexRow {
    pub at: String,
    pub principal: Option<String>,
    pub department: Option<String>,
    pub action: String,
    pub outcome: String,
    pub rows: Option<u64>,
}

impl IndexRow {
    pub fn of(record: &super::Record) -> Self {
        Self {
            at: super::format_time(&record.time),
            principal: record.principal.clone(),
            department: record.department.clone(),
            action: record.action.clone(),
            outcome: record.outcome.clone(),
            rows: record.rows,
        }
    }
}

/// The `audit_refs` rows of a record, as (kind, value): each dataset and
/// each provider department of a dataset.
pub fn refs_of(record: &super::Record) -> std::collections::BTreeSet<(&'static str, String)> {
    let mut refs = std::collections::BTreeSet::new();
    for d in &record.datasets {
        refs.insert(("dataset", d.clone()));
        refs.insert(("provider", super::provider_of(d).to_string()));
    }
    refs
}
