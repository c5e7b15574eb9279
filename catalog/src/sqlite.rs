//! The embedded SQLite backend of the [`MetaStore`]: `<data-dir>/meta.db`.
//!
//! One writer connection and a few reader connections in WAL mode, so reads
//! never wait for a write. Schema changes are numbered migrations applied at
//! open (`PRAGMA user_version`). Datasets are stored as a JSON document with
//! the columns that filters need beside it, so adding a catalogue field needs
//! no migration; the search index (FTS5 over CJK bigrams, see
//! [`crate::search`]) is maintained in the same transaction as the dataset.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, params};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::*;
use crate::search;
use crate::store::StoredPolicy;
use crate::store::{MetaStore, NewToken, TokenHash};

/// Schema versions, applied in order; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    // 1: departments, principals, tokens, datasets, versions (with the Delta version
    // behind each, rejected rows and idempotency keys), search index.
    r#"
    CREATE TABLE departments (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        org_code    TEXT UNIQUE,
        region      TEXT,
        parent      TEXT REFERENCES departments(id),
        created_at  TEXT NOT NULL
    );
    CREATE TABLE principals (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        department  TEXT REFERENCES departments(id),
        kind        TEXT NOT NULL,
        roles       TEXT NOT NULL,
        disabled    INTEGER NOT NULL DEFAULT 0,
        bootstrap   INTEGER NOT NULL DEFAULT 0,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX principals_department ON principals(department, id);
    CREATE TABLE tokens (
        id          TEXT PRIMARY KEY,
        principal   TEXT NOT NULL REFERENCES principals(id),
        hash        BLOB NOT NULL UNIQUE,
        created_at  TEXT NOT NULL,
        expires_at  TEXT,
        revoked_at  TEXT
    );
    CREATE INDEX tokens_principal ON tokens(principal);
    CREATE TABLE datasets (
        id              TEXT PRIMARY KEY,
        department      TEXT NOT NULL REFERENCES departments(id),
        resource_code   TEXT NOT NULL UNIQUE,
        classification  TEXT NOT NULL,
        sharing         TEXT NOT NULL,
        open            INTEGER NOT NULL,
        status          TEXT NOT NULL,
        doc             TEXT NOT NULL,
        current_version INTEGER,
        row_count       INTEGER NOT NULL DEFAULT 0,
        updated_at      TEXT NOT NULL
    );
    CREATE INDEX datasets_department ON datasets(department, id);
    CREATE TABLE dataset_versions (
        dataset       TEXT NOT NULL REFERENCES datasets(id),
        version       INTEGER NOT NULL,
        mode          TEXT NOT NULL,
        rows_written  INTEGER NOT NULL,
        row_count     INTEGER NOT NULL,
        bytes         INTEGER NOT NULL,
        committed_at  TEXT NOT NULL,
        committed_by  TEXT,
        rejected      INTEGER NOT NULL DEFAULT 0,
        delta_version INTEGER,
        idempotency_key TEXT,
        PRIMARY KEY (dataset, version)
    );
    CREATE UNIQUE INDEX dataset_versions_idempotency ON dataset_versions(dataset, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE VIRTUAL TABLE dataset_search USING fts5(
        id UNINDEXED, title, body, chars, tokenize = 'unicode61 remove_diacritics 2'
    );
    "#,
    // 2: dataset policies (masks and row filters, as the JSON the API takes),
    // and the policy epoch that access plans are cached under.
    r#"
    CREATE TABLE dataset_policies (
        dataset     TEXT PRIMARY KEY REFERENCES datasets(id),
        doc         TEXT NOT NULL,
        updated_at  TEXT NOT NULL,
        updated_by  TEXT NOT NULL
    );
    CREATE TABLE policy_epoch (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        epoch  INTEGER NOT NULL
    );
    INSERT INTO policy_epoch (id, epoch) VALUES (1, 0);
    "#,
    // 3: runtime casbin rules (a JSON array of values per rule) and grants
    // (the whole grant as JSON, with the columns looked up by).
    r#"
    CREATE TABLE casbin_rules (
        seq    INTEGER PRIMARY KEY AUTOINCREMENT,
        ptype  TEXT NOT NULL,
        rule   TEXT NOT NULL,
        UNIQUE (ptype, rule)
    );
    CREATE TABLE grants (
        id          TEXT PRIMARY KEY,
        dataset     TEXT NOT NULL REFERENCES datasets(id),
        department  TEXT NOT NULL REFERENCES departments(id),
        doc         TEXT NOT NULL,
        expires_at  TEXT,
        revoked_at  TEXT,
        created_at  TEXT NOT NULL
    );
    CREATE INDEX grants_pair ON grants(dataset, department);
    CREATE INDEX grants_expiry ON grants(expires_at) WHERE expires_at IS NOT NULL AND revoked_at IS NULL;
    "#,
    // 4: sharing requests and data-quality feedback (the whole object as JSON,
    // with the columns they are listed by).
    r#"
    CREATE TABLE sharing_requests (
        id          TEXT PRIMARY KEY,
        dataset     TEXT NOT NULL REFERENCES datasets(id),
        provider    TEXT NOT NULL,
        department  TEXT NOT NULL REFERENCES departments(id),
        status      TEXT NOT NULL,
        due_at      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        doc         TEXT NOT NULL
    );
    CREATE INDEX sharing_requests_provider ON sharing_requests(provider, created_at);
    CREATE INDEX sharing_requests_department ON sharing_requests(department, created_at);
    CREATE INDEX sharing_requests_pending ON sharing_requests(due_at) WHERE status = 'pending';
    CREATE TABLE feedback (
        id          TEXT PRIMARY KEY,
        dataset     TEXT NOT NULL REFERENCES datasets(id),
        provider    TEXT NOT NULL,
        department  TEXT NOT NULL REFERENCES departments(id),
        status      TEXT NOT NULL,
        due_at      TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        doc         TEXT NOT NULL
    );
    CREATE INDEX feedback_provider ON feedback(provider, created_at);
    CREATE INDEX feedback_department ON feedback(department, created_at);
    CREATE INDEX feedback_open ON feedback(due_at) WHERE status = 'open';
    "#,
    // 5: a credential may stand for a client certificate (mutual TLS) instead of a bearer secret.
    r#"
    ALTER TABLE tokens ADD COLUMN certificate TEXT;
    "#,
];

/// Readers kept open beside the writer.
const READERS: usize = 4;

/// SQLite implementation of [`MetaStore`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    /// Whether what the point caches hold may still be served.
    freshness: Freshness,
    /// Datasets by id, and credentials by token hash, as last read.
    datasets: PointCache<String, Dataset>,
    credentials: PointCache<TokenHash, (Principal, TokenInfo)>,
}

/// The results of point reads, each kept with the [`Freshness`] epoch it
/// was read under and valid while the epoch has not moved.
struct PointCache<K, V> {
    entries: Mutex<std::collections::HashMap<K, (u64, V)>>,
}

/// Entries a cache holds before it starts again.
const POINT_CACHE_CAP: usize = 10_000;

impl<K: std::hash::Hash + Eq + Clone, V: Clone> PointCache<K, V> {
    fn new() -> Self {
        Self { entries: Mutex::new(std::collections::HashMap::new()) }
    }

    fn get(&self, key: &K, epoch: u64) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(e, _)| *e == epoch).map(|(_, value)| value.clone())
    }

    fn put(&self, key: K, epoch: u64, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= POINT_CACHE_CAP {
            entries.clear();
        }
        entries.insert(key, (epoch, value));
    }
}

/// How often, at most, the readers' `PRAGMA data_version` is looked at for
/// commits made by another process. Writes through the store itself retire
/// cached point reads at once; another process's within this time.
const EXTERNAL_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// When cached point reads stop being valid: an epoch that every write
/// through the store moves before its caller is answered, and that moves
/// when a reader's `PRAGMA data_version` (which any other connection's
/// commit changes) shows a commit since that reader was last looked at. A
/// hit therefore costs no read transaction (opening one took several
/// `fcntl` lock calls) and no lock but the cache's own.
struct Freshness {
    epoch: AtomicU64,
    started: Instant,
    /// When `data_version` was last looked at, in milliseconds since `started`.
    checked_at: AtomicU64,
    /// What each reader said then.
    versions: Mutex<Vec<i64>>,
}

impl Freshness {
    fn new(readers: &[Mutex<Connection>]) -> Result<Self> {
        let versions = readers.iter().map(|r| lock(r).and_then(|c| data_version(&c))).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            epoch: AtomicU64::new(0),
            started: Instant::now(),
            checked_at: AtomicU64::new(0),
            versions: Mutex::new(versions),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The current epoch, after looking for another process's commits when
    /// the last look is older than [`EXTERNAL_CHECK`] and a reader is free.
    fn epoch(&self, readers: &[Mutex<Connection>]) -> Result<u64> {
        let due =
            self.now_ms().saturating_sub(self.checked_at.load(Ordering::Relaxed)) >= EXTERNAL_CHECK.as_millis() as u64;
        if due && let Some((i, conn)) = readers.iter().enumerate().find_map(|(i, r)| r.try_lock().ok().map(|c| (i, c)))
        {
            let version = data_version(&conn)?;
            drop(conn);
            let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
            if versions[i] != version {
                versions[i] = version;
                self.epoch.fetch_add(1, Ordering::AcqRel);
            }
            self.checked_at.store(self.now_ms(), Ordering::Relaxed);
        }
        Ok(self.epoch.load(Ordering::Acquire))
    }

    /// A write through the store has ended (committed or not).
    fn wrote(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

fn data_version(c: &Connection) -> Result<i64> {
    Ok(c.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        migrate(&mut writer)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            )?;
            configure(&r)?;
            readers.push(Mutex::new(r));
        }
        let freshness = Freshness::new(&readers)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Mutex::new(writer),
                readers,
                freshness,
                datasets: PointCache::new(),
                credentials: PointCache::new(),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let conn = inner.reader()?;
            f(&conn)
        })
        .await
    }

    /// A point read by primary key, answered from `cache` while no write has
    /// been seen since it was read ([`Freshness`]; only `Some` answers are
    /// kept). A miss reads on the calling thread when a reader connection
    /// is free (a few microseconds in WAL mode, where readers never wait for
    /// the writer), else on a blocking thread like any read.
    async fn read_point_cached<K, V, F>(&self, cache: &PointCache<K, V>, key: K, f: F) -> Result<Option<V>>
    where
        K: std::hash::Hash + Eq + Clone + Send + 'static,
        V: Clone + Send + 'static,
        F: FnOnce(&Connection) -> Result<Option<V>> + Send + 'static,
    {
        // Taken before the read: a write that ends meanwhile retires what it finds.
        let epoch = self.inner.freshness.epoch(&self.inner.readers)?;
        if let Some(hit) = cache.get(&key, epoch) {
            return Ok(Some(hit));
        }
        // The guard must not live across the await below, so the inline
        // read is decided and done first; `f` comes back when no reader is free.
        let inline = match self.inner.readers.iter().find_map(|r| r.try_lock().ok()) {
            Some(conn) => Ok(f(&conn)),
            None => Err(f),
        };
        let found = match inline {
            Ok(answer) => answer?,
            Err(f) => self.read(f).await?,
        };
        if let Some(value) = &found {
            cache.put(key, epoch, value.clone());
        }
        Ok(found)
    }

    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        blocking(move || {
            let mut conn = lock(&inner.writer)?;
            let written = (|| {
                let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })();
            // Before the caller hears of it: cached point reads may predate it.
            inner.freshness.wrote();
            written
        })
        .await
    }
}

impl Inner {
    fn reader(&self) -> Result<MutexGuard<'_, Connection>> {
        for r in &self.readers {
            if let Ok(guard) = r.try_lock() {
                return Ok(guard);
            }
        }
        let i = rand::random_range(0..self.readers.len());
        lock(&self.readers[i])
    }
}

fn lock(m: &Mutex<Connection>) -> Result<MutexGuard<'_, Connection>> {
    m.lock().map_err(|_| Error::Task { message: "a metadata store connection was poisoned by a panic".into() })
}

async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Task { message: e.to_string() })?
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if current > MIGRATIONS.len() {
        return Err(Error::Corrupt {
            what: "schema version",
            message: format!("database is at version {current}, newer than this gdx ({})", MIGRATIONS.len()),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "metadata store migrated");
    }
    Ok(())
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn parse_opt_ts(s: Option<String>) -> rusqlite::Result<Option<DateTime<Utc>>> {
    s.as_deref().map(parse_ts).transpose()
}

fn decode_err(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

const DEPARTMENT_COLS: &str = "id, name, org_code, region, parent, created_at";

fn department_row(r: &Row<'_>) -> rusqlite::Result<Department> {
    Ok(Department {
        id: r.get(0)?,
        name: r.get(1)?,
        org_code: r.get(2)?,
        region: r.get(3)?,
        parent: r.get(4)?,
        created_at: parse_ts(&r.get::<_, String>(5)?)?,
    })
}

const PRINCIPAL_COLS: &str = "p.id, p.name, p.department, p.kind, p.roles, p.disabled, p.created_at";

fn principal_row(r: &Row<'_>) -> rusqlite::Result<Principal> {
    let kind: String = r.get(3)?;
    let roles: String = r.get(4)?;
    Ok(Principal {
        id: r.get(0)?,
        name: r.get(1)?,
        department: r.get(2)?,
        kind: kind.parse().map_err(|m: String| decode_err(std::io::Error::other(m)))?,
        roles: serde_json::from_str(&roles).map_err(decode_err)?,
        disabled: r.get(5)?,
        created_at: parse_ts(&r.get::<_, String>(6)?)?,
    })
}

const TOKEN_COLS: &str = "t.id, t.principal, t.created_at, t.expires_at, t.revoked_at, t.certificate";

fn token_row(r: &Row<'_>, at: usize) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: r.get(at)?,
        principal: r.get(at + 1)?,
        created_at: parse_ts(&r.get::<_, String>(at + 2)?)?,
        expires_at: parse_opt_ts(r.get(at + 3)?)?,
        revoked_at: parse_opt_ts(r.get(at + 4)?)?,
        certificate: r.get(at + 5)?,
    })
}

const DATASET_COLS: &str = "d.doc, d.current_version, d.row_count, d.updated_at";

fn dataset_row(r: &Row<'_>) -> rusqlite::Result<Dataset> {
    let doc: String = r.get(0)?;
    let mut d: Dataset = serde_json::from_str(&doc).map_err(decode_err)?;
    d.current_version = r.get(1)?;
    d.row_count = r.get(2)?;
    d.updated_at = parse_ts(&r.get::<_, String>(3)?)?;
    Ok(d)
}

const VERSION_COLS: &str = "version, mode, row_count, rows_written, bytes, committed_at, committed_by, rejected, delta_version, idempotency_key";

fn version_row(r: &Row<'_>) -> rusqlite::Result<Version> {
    Ok(Version {
        version: r.get(0)?,
        mode: r.get(1)?,
        row_count: r.get(2)?,
        rows_written: r.get(3)?,
        bytes: r.get(4)?,
        committed_at: parse_ts(&r.get::<_, String>(5)?)?,
        committed_by: r.get(6)?,
        rejected: r.get(7)?,
        delta_version: r.get(8)?,
        idempotency_key: r.get(9)?,
    })
}

fn not_found(kind: &'static str, id: &str) -> Error {
    Error::NotFound { kind, id: id.to_string() }
}

fn exists(tx: &Connection, sql: &str, value: &str) -> Result<bool> {
    Ok(tx.query_row(sql, [value], |_| Ok(())).optional()?.is_some())
}

fn get_principal(c: &Connection, id: &str) -> Result<Principal> {
    c.query_row(&format!("SELECT {PRINCIPAL_COLS} FROM principals p WHERE p.id = ?1"), [id], principal_row)
        .optional()?
        .ok_or_else(|| not_found("principal", id))
}

fn get_token(c: &Connection, id: &str) -> Result<TokenInfo> {
    c.query_row(&format!("SELECT {TOKEN_COLS} FROM tokens t WHERE t.id = ?1"), [id], |r| token_row(r, 0))
        .optional()?
        .ok_or_else(|| not_found("token", id))
}

fn get_dataset(c: &Connection, id: &str) -> Result<Dataset> {
    c.prepare_cached(&format!("SELECT {DATASET_COLS} FROM datasets d WHERE d.id = ?1"))?
        .query_row([id], dataset_row)
        .optional()?
        .ok_or_else(|| not_found("dataset", id))
}

fn bump_epoch(tx: &Connection) -> Result<()> {
    tx.execute("UPDATE policy_epoch SET epoch = epoch + 1 WHERE id = 1", [])?;
    Ok(())
}

fn rule_json(r: &CasbinRule) -> Result<String> {
    serde_json::to_string(&r.values).map_err(|e| Error::Corrupt { what: "casbin rule", message: e.to_string() })
}

/// Adds one rule unless present; the number added (0 or 1).
fn add_rule(tx: &Connection, r: &CasbinRule) -> Result<usize> {
    Ok(tx
        .execute("INSERT OR IGNORE INTO casbin_rules (ptype, rule) VALUES (?1, ?2)", params![r.ptype, rule_json(r)?])?)
}

/// Removes one rule; the number removed (0 or 1).
fn remove_rule(tx: &Connection, r: &CasbinRule) -> Result<usize> {
    Ok(tx.execute("DELETE FROM casbin_rules WHERE ptype = ?1 AND rule = ?2", params![r.ptype, rule_json(r)?])?)
}

/// Applies `one` to each rule; moves the epoch on if any changed. Whether any did.
fn change_rules(
    tx: &Connection,
    rules: &[CasbinRule],
    one: fn(&Connection, &CasbinRule) -> Result<usize>,
) -> Result<bool> {
    let mut changed = 0;
    for r in rules {
        changed += one(tx, r)?;
    }
    if changed > 0 {
        bump_epoch(tx)?;
    }
    Ok(changed > 0)
}

/// (dataset, department) pairs whose casbin link is still there although
/// one of their grants has ended by `now`.
fn expired_links(c: &Connection, now: DateTime<Utc>) -> Result<Vec<(String, String)>> {
    let mut stmt = c.prepare(
        "SELECT DISTINCT g.dataset, g.department FROM grants g
         WHERE g.revoked_at IS NULL AND g.expires_at IS NOT NULL AND g.expires_at <= ?1
           AND EXISTS (SELECT 1 FROM casbin_rules r WHERE r.ptype = 'g2' AND r.rule = json_array(g.department, g.dataset))",
    )?;
    let rows = stmt.query_map([ts(&now)], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Makes the casbin link of a (dataset, department) pair follow its grants:
/// present while any of them is in force at `now`. Whether it is present.
fn sync_grant_link(tx: &Connection, dataset: &str, department: &str, now: DateTime<Utc>) -> Result<bool> {
    let live: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM grants WHERE dataset = ?1 AND department = ?2 AND revoked_at IS NULL
                          AND (expires_at IS NULL OR expires_at > ?3))",
        params![dataset, department, ts(&now)],
        |r| r.get(0),
    )?;
    let link = CasbinRule { ptype: "g2".into(), values: vec![department.to_string(), dataset.to_string()] };
    if live {
        add_rule(tx, &link)?
    } else {
        remove_rule(tx, &link)?
    };
    Ok(live)
}

fn grant_doc(g: &Grant) -> Result<String> {
    serde_json::to_string(g).map_err(|e| Error::Corrupt { what: "grant", message: e.to_string() })
}

fn parse_grant(doc: &str) -> Result<Grant> {
    serde_json::from_str(doc).map_err(|e| Error::Corrupt { what: "grant", message: e.to_string() })
}

fn get_grant(c: &Connection, id: &str) -> Result<Grant> {
    let doc: String = c
        .query_row("SELECT doc FROM grants WHERE id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| not_found("grant", id))?;
    parse_grant(&doc)
}

/// The two tables of work items answered by deadline: sharing requests and feedback.
trait WorkItem: Serialize + serde::de::DeserializeOwned + Send + 'static {
    const TABLE: &'static str;
    const KIND: &'static str;
    /// The status that means "not answered yet".
    const OPEN: &'static str;
    fn id(&self) -> &str;
    fn columns(&self) -> (&str, &str, &str, String, DateTime<Utc>, DateTime<Utc>);
}

/// A [`WorkItem`] of a type with the fields `id`, `dataset`, `provider`,
/// `department`, `status`, `due_at` and `created_at`.
macro_rules! work_item {
    ($type:ty, $table:literal, $kind:literal, $open:literal) => {
        impl WorkItem for $type {
            const TABLE: &'static str = $table;
            const KIND: &'static str = $kind;
            const OPEN: &'static str = $open;
            fn id(&self) -> &str {
                &self.id
            }
            fn columns(&self) -> (&str, &str, &str, String, DateTime<Utc>, DateTime<Utc>) {
                (&self.dataset, &self.provider, &self.department, self.status.to_string(), self.due_at, self.created_at)
            }
        }
    };
}

work_item!(SharingRequest, "sharing_requests", "sharing request", "pending");
work_item!(Feedback, "feedback", "feedback", "open");

fn work_doc<T: WorkItem>(item: &T) -> Result<String> {
    serde_json::to_string(item).map_err(|e| Error::Corrupt { what: T::KIND, message: e.to_string() })
}

fn get_work<T: WorkItem>(c: &Connection, id: &str) -> Result<T> {
    let doc: String = c
        .query_row(&format!("SELECT doc FROM {} WHERE id = ?1", T::TABLE), [id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| not_found(T::KIND, id))?;
    serde_json::from_str(&doc).map_err(|e| Error::Corrupt { what: T::KIND, message: e.to_string() })
}

fn insert_work<T: WorkItem>(tx: &Connection, item: &T) -> Result<()> {
    let (dataset, provider, department, status, due_at, created_at) = item.columns();
    get_dataset(tx, dataset)?;
    if !exists(tx, "SELECT 1 FROM departments WHERE id = ?1", department)? {
        return Err(not_found("department", department));
    }
    if exists(tx, &format!("SELECT 1 FROM {} WHERE id = ?1", T::TABLE), item.id())? {
        return Err(Error::Conflict { kind: T::KIND, field: "id", value: item.id().to_string() });
    }
    tx.execute(
        &format!(
            "INSERT INTO {} (id, dataset, provider, department, status, due_at, created_at, doc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            T::TABLE
        ),
        params![item.id(), dataset, provider, department, status, ts(&due_at), ts(&created_at), work_doc(item)?],
    )?;
    Ok(())
}

/// Replaces an unanswered item by its answered state; `Conflict` when it was answered already.
fn answer_work<T: WorkItem>(tx: &Connection, item: &T) -> Result<()> {
    let (_, _, _, status, _, _) = item.columns();
    let changed = tx.execute(
        &format!("UPDATE {} SET status = ?2, doc = ?3 WHERE id = ?1 AND status = ?4", T::TABLE),
        params![item.id(), status, work_doc(item)?, T::OPEN],
    )?;
    if changed == 0 {
        get_work::<T>(tx, item.id())?;
        return Err(Error::Answered { kind: T::KIND, id: item.id().to_string() });
    }
    Ok(())
}

fn list_work<T: WorkItem>(c: &Connection, q: &WorkQuery, page: &PageRequest) -> Result<Page<T>> {
    let (limit, offset) = limit_offset(page)?;
    let overdue = q.overdue_at.as_ref().map(ts);
    let mut stmt = c.prepare(&format!(
        "SELECT doc FROM {} WHERE (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR department = ?2)
           AND (?3 IS NULL OR provider = ?3 OR department = ?3) AND (?4 IS NULL OR status = ?4)
           AND (?5 IS NULL OR (status = '{}' AND due_at < ?5)) AND (?6 IS NULL OR dataset = ?6)
         ORDER BY created_at DESC, id LIMIT ?7 OFFSET ?8",
        T::TABLE,
        T::OPEN
    ))?;
    let rows = stmt.query_map(
        params![q.provider, q.department, q.involving, q.status, overdue, q.dataset, limit, offset],
        |r| r.get::<_, String>(0),
    )?;
    let mut items = Vec::new();
    for doc in rows {
        items.push(serde_json::from_str(&doc?).map_err(|e| Error::Corrupt { what: T::KIND, message: e.to_string() })?);
    }
    page.page(items)
}

fn insert_token(tx: &Connection, t: &NewToken, now: &DateTime<Utc>) -> Result<TokenInfo> {
    if exists(tx, "SELECT 1 FROM tokens WHERE id = ?1", &t.id)? {
        return Err(Error::Conflict { kind: "token", field: "id", value: t.id.clone() });
    }
    tx.execute(
        "INSERT INTO tokens (id, principal, hash, created_at, expires_at, certificate) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![t.id, t.principal, &t.hash[..], ts(now), t.expires_at.as_ref().map(ts), t.certificate],
    )?;
    get_token(tx, &t.id)
}

fn write_search(tx: &Connection, d: &Dataset) -> Result<()> {
    tx.execute("DELETE FROM dataset_search WHERE id = ?1", [&d.id])?;
    let mut body = String::new();
    for part in [d.description.as_deref(), d.category.as_deref(), d.sharing_condition.as_deref()]
        .into_iter()
        .flatten()
        .chain(d.columns.iter().filter_map(|c| c.title.as_deref()))
        .chain(d.columns.iter().filter_map(|c| c.description.as_deref()))
        .chain(d.columns.iter().map(|c| c.name.as_str()))
        .chain([d.name.as_str(), d.resource_code.as_str()])
    {
        body.push_str(part);
        body.push('\n');
    }
    let (title, title_chars) = search::index_terms(&d.title);
    let (body, body_chars) = search::index_terms(&body);
    tx.execute(
        "INSERT INTO dataset_search (id, title, body, chars) VALUES (?1, ?2, ?3, ?4)",
        params![d.id, title, body, format!("{title_chars} {body_chars}")],
    )?;
    Ok(())
}

fn limit_offset(page: &PageRequest) -> Result<(i64, i64)> {
    Ok(((page.limit + 1) as i64, page.offset()? as i64))
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn create_department(&self, d: Department) -> Result<Department> {
        self.write(move |tx| {
            if exists(tx, "SELECT 1 FROM departments WHERE id = ?1", &d.id)? {
                return Err(Error::Conflict { kind: "department", field: "id", value: d.id });
            }
            if let Some(code) = &d.org_code
                && exists(tx, "SELECT 1 FROM departments WHERE org_code = ?1", code)?
            {
                return Err(Error::Conflict { kind: "department", field: "org_code", value: code.clone() });
            }
            if let Some(parent) = &d.parent
                && !exists(tx, "SELECT 1 FROM departments WHERE id = ?1", parent)?
            {
                return Err(Error::invalid("parent", format!("unknown department '{parent}'")));
            }
            tx.execute(
                &format!("INSERT INTO departments ({DEPARTMENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![d.id, d.name, d.org_code, d.region, d.parent, ts(&d.created_at)],
            )?;
            Ok(tx.query_row(
                &format!("SELECT {DEPARTMENT_COLS} FROM departments WHERE id = ?1"),
                [&d.id],
                department_row,
            )?)
        })
        .await
    }

    async fn department(&self, id: &str) -> Result<Department> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(&format!("SELECT {DEPARTMENT_COLS} FROM departments WHERE id = ?1"), [&id], department_row)
                .optional()?
                .ok_or_else(|| not_found("department", &id))
        })
        .await
    }

    async fn list_departments(&self, page: PageRequest) -> Result<Page<Department>> {
        self.read(move |c| {
            let (limit, offset) = limit_offset(&page)?;
            let mut stmt =
                c.prepare(&format!("SELECT {DEPARTMENT_COLS} FROM departments ORDER BY id LIMIT ?1 OFFSET ?2"))?;
            let items = stmt.query_map(params![limit, offset], department_row)?.collect::<Result<Vec<_>, _>>()?;
            page.page(items)
        })
        .await
    }

    async fn create_principal(&self, p: Principal, token: NewToken) -> Result<(Principal, TokenInfo)> {
        self.write(move |tx| {
            if exists(tx, "SELECT 1 FROM principals WHERE id = ?1", &p.id)? {
                return Err(Error::Conflict { kind: "principal", field: "id", value: p.id });
            }
            if let Some(dep) = &p.department
                && !exists(tx, "SELECT 1 FROM departments WHERE id = ?1", dep)?
            {
                return Err(Error::invalid("department", format!("unknown department '{dep}'")));
            }
            let roles = serde_json::to_string(&p.roles).map_err(|e| Error::Corrupt { what: "roles", message: e.to_string() })?;
            tx.execute(
                "INSERT INTO principals (id, name, department, kind, roles, disabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![p.id, p.name, p.department, p.kind.as_str(), roles, p.disabled, ts(&p.created_at)],
            )?;
            let info = insert_token(tx, &token, &p.created_at)?;
            Ok((get_principal(tx, &p.id)?, info))
        })
        .await
    }

    async fn principal(&self, id: &str) -> Result<Principal> {
        let id = id.to_string();
        self.read(move |c| get_principal(c, &id)).await
    }

    async fn list_principals(&self, department: Option<String>, page: PageRequest) -> Result<Page<Principal>> {
        self.read(move |c| {
            let (limit, offset) = limit_offset(&page)?;
            let mut stmt = c.prepare(&format!(
                "SELECT {PRINCIPAL_COLS} FROM principals p WHERE (?1 IS NULL OR p.department = ?1) ORDER BY p.id LIMIT ?2 OFFSET ?3"
            ))?;
            let items =
                stmt.query_map(params![department, limit, offset], principal_row)?.collect::<Result<Vec<_>, _>>()?;
            page.page(items)
        })
        .await
    }

    async fn update_principal(&self, id: &str, roles: Option<Vec<Role>>, disabled: Option<bool>) -> Result<Principal> {
        let id = id.to_string();
        self.write(move |tx| {
            get_principal(tx, &id)?;
            if let Some(roles) = roles {
                let roles = serde_json::to_string(&roles)
                    .map_err(|e| Error::Corrupt { what: "roles", message: e.to_string() })?;
                tx.execute("UPDATE principals SET roles = ?2 WHERE id = ?1", params![id, roles])?;
            }
            if let Some(disabled) = disabled {
                tx.execute("UPDATE principals SET disabled = ?2 WHERE id = ?1", params![id, disabled])?;
            }
            get_principal(tx, &id)
        })
        .await
    }

    async fn ensure_admin(&self, admin: Principal, token: Option<NewToken>) -> Result<Principal> {
        self.write(move |tx| {
            let existing: Option<String> = tx
                .query_row("SELECT id FROM principals WHERE bootstrap = 1", [], |r| r.get(0))
                .optional()?;
            let id = match existing {
                Some(id) => id,
                None => {
                    let roles = serde_json::to_string(&admin.roles)
                        .map_err(|e| Error::Corrupt { what: "roles", message: e.to_string() })?;
                    tx.execute(
                        "INSERT INTO principals (id, name, department, kind, roles, disabled, bootstrap, created_at) VALUES (?1, ?2, NULL, ?3, ?4, 0, 1, ?5)",
                        params![admin.id, admin.name, admin.kind.as_str(), roles, ts(&admin.created_at)],
                    )?;
                    admin.id.clone()
                }
            };
            if let Some(mut t) = token {
                // The configured token replaces the previous configured one (same id).
                tx.execute("DELETE FROM tokens WHERE id = ?1", [&t.id])?;
                tx.execute("DELETE FROM tokens WHERE hash = ?1", [&t.hash[..]])?;
                t.principal = id.clone();
                insert_token(tx, &t, &Utc::now())?;
            }
            get_principal(tx, &id)
        })
        .await
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenInfo> {
        self.write(move |tx| {
            get_principal(tx, &token.principal)?;
            insert_token(tx, &token, &Utc::now())
        })
        .await
    }

    async fn token(&self, id: &str) -> Result<TokenInfo> {
        let id = id.to_string();
        self.read(move |c| get_token(c, &id)).await
    }

    async fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        let id = id.to_string();
        self.write(move |tx| {
            get_token(tx, &id)?;
            tx.execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, ts(&Utc::now())],
            )?;
            get_token(tx, &id)
        })
        .await
    }

    async fn list_tokens(&self, principal: &str) -> Result<Vec<TokenInfo>> {
        let principal = principal.to_string();
        self.read(move |c| {
            get_principal(c, &principal)?;
            let mut stmt = c.prepare(&format!(
                "SELECT {TOKEN_COLS} FROM tokens t WHERE t.principal = ?1 ORDER BY t.created_at, t.id"
            ))?;
            let rows = stmt.query_map([&principal], |r| token_row(r, 0))?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn authenticate(&self, hash: TokenHash) -> Result<Option<(Principal, TokenInfo)>> {
        self.read_point_cached(&self.inner.credentials, hash, move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {PRINCIPAL_COLS}, {TOKEN_COLS} FROM tokens t JOIN principals p ON p.id = t.principal WHERE t.hash = ?1"
            ))?
            .query_row([&hash[..]], |r| Ok((principal_row(r)?, token_row(r, 7)?)))
            .optional()?)
        })
        .await
    }

    async fn create_dataset(&self, d: Dataset) -> Result<Dataset> {
        self.write(move |tx| {
            if !exists(tx, "SELECT 1 FROM departments WHERE id = ?1", &d.department)? {
                return Err(Error::invalid("department", format!("unknown department '{}'", d.department)));
            }
            if exists(tx, "SELECT 1 FROM datasets WHERE id = ?1", &d.id)? {
                return Err(Error::Conflict { kind: "dataset", field: "id", value: d.id });
            }
            if exists(tx, "SELECT 1 FROM datasets WHERE resource_code = ?1", &d.resource_code)? {
                return Err(Error::Conflict { kind: "dataset", field: "resource_code", value: d.resource_code });
            }
            let doc = serde_json::to_string(&d).map_err(|e| Error::Corrupt { what: "dataset", message: e.to_string() })?;
            tx.execute(
                "INSERT INTO datasets (id, department, resource_code, classification, sharing, open, status, doc, current_version, row_count, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, NULL, 0, ?9)",
                params![
                    d.id, d.department, d.resource_code, d.classification.as_str(), d.sharing.as_str(), d.open,
                    d.status.as_str(), doc, ts(&d.updated_at)
                ],
            )?;
            write_search(tx, &d)?;
            get_dataset(tx, &d.id)
        })
        .await
    }

    async fn dataset(&self, id: &str) -> Result<Dataset> {
        let owned = id.to_string();
        self.read_point_cached(&self.inner.datasets, owned.clone(), move |c| get_dataset(c, &owned).map(Some))
            .await?
            .ok_or_else(|| not_found("dataset", id))
    }

    async fn update_dataset(&self, d: Dataset) -> Result<Dataset> {
        self.write(move |tx| {
            get_dataset(tx, &d.id)?;
            let taken: Option<String> = tx
                .query_row("SELECT id FROM datasets WHERE resource_code = ?1 AND id <> ?2", params![d.resource_code, d.id], |r| r.get(0))
                .optional()?;
            if taken.is_some() {
                return Err(Error::Conflict { kind: "dataset", field: "resource_code", value: d.resource_code });
            }
            let doc = serde_json::to_string(&d).map_err(|e| Error::Corrupt { what: "dataset", message: e.to_string() })?;
            tx.execute(
                "UPDATE datasets SET resource_code = ?2, classification = ?3, sharing = ?4, open = ?5, status = ?6, doc = ?7, updated_at = ?8 WHERE id = ?1",
                params![d.id, d.resource_code, d.classification.as_str(), d.sharing.as_str(), d.open, d.status.as_str(), doc, ts(&d.updated_at)],
            )?;
            write_search(tx, &d)?;
            get_dataset(tx, &d.id)
        })
        .await
    }

    async fn search_datasets(&self, q: DatasetQuery, page: PageRequest) -> Result<Page<Dataset>> {
        self.read(move |c| {
            let (limit, offset) = limit_offset(&page)?;
            let text = q.q.as_deref().and_then(search::fts_query);
            if q.q.as_deref().is_some_and(|t| !t.trim().is_empty()) && text.is_none() {
                // Only punctuation: nothing can match.
                return page.page(Vec::new());
            }
            let filters = "(?2 IS NULL OR d.classification = ?2) AND (?3 IS NULL OR d.department = ?3)
                 AND (?4 IS NULL OR d.sharing = ?4) AND (?5 IS NULL OR d.open = ?5) AND (?6 IS NULL OR d.status = ?6)";
            let sql = if text.is_some() {
                format!(
                    "SELECT {DATASET_COLS} FROM dataset_search s JOIN datasets d ON d.id = s.id
                     WHERE dataset_search MATCH ?1 AND {filters}
                     ORDER BY bm25(dataset_search, 0.0, 10.0, 1.0, 0.5), d.id LIMIT ?7 OFFSET ?8"
                )
            } else {
                format!("SELECT {DATASET_COLS} FROM datasets d WHERE ?1 IS NULL AND {filters} ORDER BY d.id LIMIT ?7 OFFSET ?8")
            };
            let mut stmt = c.prepare(&sql)?;
            let items = stmt
                .query_map(
                    params![
                        text,
                        q.classification.map(|v| v.as_str()),
                        q.department,
                        q.sharing.map(|v| v.as_str()),
                        q.open,
                        q.status.map(|v| v.as_str()),
                        limit,
                        offset
                    ],
                    dataset_row,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            page.page(items)
        })
        .await
    }

    async fn versions(&self, dataset: &str, page: PageRequest) -> Result<Page<Version>> {
        let dataset = dataset.to_string();
        self.read(move |c| {
            get_dataset(c, &dataset)?;
            let (limit, offset) = limit_offset(&page)?;
            let mut stmt = c.prepare(&format!(
                "SELECT {VERSION_COLS} FROM dataset_versions WHERE dataset = ?1 ORDER BY version DESC LIMIT ?2 OFFSET ?3"
            ))?;
            let items = stmt.query_map(params![dataset, limit, offset], version_row)?.collect::<Result<Vec<_>, _>>()?;
            page.page(items)
        })
        .await
    }

    async fn record_version(&self, dataset: &str, v: Version) -> Result<bool> {
        let dataset = dataset.to_string();
        self.write(move |tx| {
            get_dataset(tx, &dataset)?;
            let inserted = tx.execute(
                &format!("INSERT OR IGNORE INTO dataset_versions (dataset, {VERSION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    dataset, v.version, v.mode, v.row_count, v.rows_written, v.bytes, ts(&v.committed_at),
                    v.committed_by, v.rejected, v.delta_version, v.idempotency_key
                ],
            )? == 1;
            tx.execute(
                "UPDATE datasets SET current_version = ?2, row_count = ?3, updated_at = ?4
                 WHERE id = ?1 AND (current_version IS NULL OR current_version < ?2)",
                params![dataset, v.version, v.row_count, ts(&v.committed_at)],
            )?;
            Ok(inserted)
        })
        .await
    }

    async fn version(&self, dataset: &str, version: i64) -> Result<Version> {
        let dataset = dataset.to_string();
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {VERSION_COLS} FROM dataset_versions WHERE dataset = ?1 AND version = ?2"),
                params![dataset, version],
                version_row,
            )
            .optional()?
            .ok_or_else(|| not_found("version", &format!("{dataset}@{version}")))
        })
        .await
    }

    async fn version_by_idempotency_key(&self, dataset: &str, key: &str) -> Result<Option<Version>> {
        let (dataset, key) = (dataset.to_string(), key.to_string());
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {VERSION_COLS} FROM dataset_versions WHERE dataset = ?1 AND idempotency_key = ?2"),
                params![dataset, key],
                version_row,
            )
            .optional()?)
        })
        .await
    }

    async fn dataset_policy(&self, dataset: &str) -> Result<Option<StoredPolicy>> {
        let dataset = dataset.to_string();
        self.read(move |c| {
            get_dataset(c, &dataset)?;
            let row: Option<(String, String, String)> = c
                .query_row(
                    "SELECT doc, updated_at, updated_by FROM dataset_policies WHERE dataset = ?1",
                    [&dataset],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            row.map(|(doc, at, by)| {
                Ok(StoredPolicy {
                    doc: serde_json::from_str(&doc)
                        .map_err(|e| Error::Corrupt { what: "dataset policy", message: e.to_string() })?,
                    updated_at: parse_ts(&at)?,
                    updated_by: by,
                })
            })
            .transpose()
        })
        .await
    }

    async fn set_dataset_policy(&self, dataset: &str, doc: serde_json::Value, by: &str) -> Result<StoredPolicy> {
        let (dataset, by) = (dataset.to_string(), by.to_string());
        self.write(move |tx| {
            get_dataset(tx, &dataset)?;
            let at = crate::model::now();
            tx.execute(
                "INSERT INTO dataset_policies (dataset, doc, updated_at, updated_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (dataset) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                params![dataset, doc.to_string(), ts(&at), by],
            )?;
            bump_epoch(tx)?;
            Ok(StoredPolicy { doc, updated_at: at, updated_by: by })
        })
        .await
    }

    async fn policy_epoch(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("SELECT epoch FROM policy_epoch WHERE id = 1", [], |r| r.get(0))?)).await
    }

    async fn dataset_policies(&self) -> Result<Vec<(String, StoredPolicy)>> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT dataset, doc, updated_at, updated_by FROM dataset_policies ORDER BY dataset")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, parse_ts(&r.get::<_, String>(2)?)?, r.get(3)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (dataset, doc, updated_at, updated_by) = row?;
                let doc = serde_json::from_str(&doc)
                    .map_err(|e| Error::Corrupt { what: "dataset policy", message: e.to_string() })?;
                out.push((dataset, StoredPolicy { doc, updated_at, updated_by }));
            }
            Ok(out)
        })
        .await
    }

    async fn casbin_rules(&self) -> Result<Vec<CasbinRule>> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT ptype, rule FROM casbin_rules ORDER BY seq")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (ptype, rule) = row?;
                let values = serde_json::from_str(&rule)
                    .map_err(|e| Error::Corrupt { what: "casbin rule", message: e.to_string() })?;
                out.push(CasbinRule { ptype, values });
            }
            Ok(out)
        })
        .await
    }

    async fn add_casbin_rules(&self, rules: Vec<CasbinRule>) -> Result<bool> {
        self.write(move |tx| change_rules(tx, &rules, add_rule)).await
    }

    async fn remove_casbin_rules(&self, rules: Vec<CasbinRule>) -> Result<bool> {
        self.write(move |tx| change_rules(tx, &rules, remove_rule)).await
    }

    async fn remove_filtered_casbin_rules(&self, ptype: &str, field_index: usize, values: Vec<String>) -> Result<bool> {
        let ptype = ptype.to_string();
        self.write(move |tx| {
            let mut doomed = Vec::new();
            {
                let mut stmt = tx.prepare("SELECT seq, rule FROM casbin_rules WHERE ptype = ?1")?;
                let rows = stmt.query_map([&ptype], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    let (seq, rule) = row?;
                    let rule: Vec<String> = serde_json::from_str(&rule)
                        .map_err(|e| Error::Corrupt { what: "casbin rule", message: e.to_string() })?;
                    let matches = values
                        .iter()
                        .enumerate()
                        .all(|(i, v)| v.is_empty() || rule.get(field_index + i).is_some_and(|have| have == v));
                    if matches {
                        doomed.push(seq);
                    }
                }
            }
            for seq in &doomed {
                tx.execute("DELETE FROM casbin_rules WHERE seq = ?1", [seq])?;
            }
            if !doomed.is_empty() {
                bump_epoch(tx)?;
            }
            Ok(!doomed.is_empty())
        })
        .await
    }

    async fn replace_casbin_rules(&self, rules: Vec<CasbinRule>) -> Result<()> {
        self.write(move |tx| {
            tx.execute("DELETE FROM casbin_rules", [])?;
            for r in &rules {
                add_rule(tx, r)?;
            }
            bump_epoch(tx)
        })
        .await
    }

    async fn create_grant(&self, grant: Grant) -> Result<Grant> {
        self.write(move |tx| {
            get_dataset(tx, &grant.dataset)?;
            if !exists(tx, "SELECT 1 FROM departments WHERE id = ?1", &grant.department)? {
                return Err(not_found("department", &grant.department));
            }
            if exists(tx, "SELECT 1 FROM grants WHERE id = ?1", &grant.id)? {
                return Err(Error::Conflict { kind: "grant", field: "id", value: grant.id.clone() });
            }
            tx.execute(
                "INSERT INTO grants (id, dataset, department, doc, expires_at, revoked_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    grant.id,
                    grant.dataset,
                    grant.department,
                    grant_doc(&grant)?,
                    grant.expires_at.as_ref().map(ts),
                    grant.revoked_at.as_ref().map(ts),
                    ts(&grant.created_at)
                ],
            )?;
            sync_grant_link(tx, &grant.dataset, &grant.department, crate::model::now())?;
            bump_epoch(tx)?;
            Ok(grant)
        })
        .await
    }

    async fn grant(&self, id: &str) -> Result<Grant> {
        let id = id.to_string();
        self.read(move |c| get_grant(c, &id)).await
    }

    async fn grants(&self, dataset: Option<String>, department: Option<String>) -> Result<Vec<Grant>> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT doc FROM grants WHERE (?1 IS NULL OR dataset = ?1) AND (?2 IS NULL OR department = ?2)
                 ORDER BY created_at DESC, id",
            )?;
            let rows = stmt.query_map(params![dataset, department], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for doc in rows {
                out.push(parse_grant(&doc?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn revoke_grant(&self, id: &str, at: DateTime<Utc>) -> Result<Grant> {
        let id = id.to_string();
        self.write(move |tx| {
            let mut grant = get_grant(tx, &id)?;
            if grant.revoked_at.is_some() {
                return Ok(grant);
            }
            grant.revoked_at = Some(at);
            tx.execute(
                "UPDATE grants SET doc = ?2, revoked_at = ?3 WHERE id = ?1",
                params![id, grant_doc(&grant)?, ts(&at)],
            )?;
            sync_grant_link(tx, &grant.dataset, &grant.department, at)?;
            bump_epoch(tx)?;
            Ok(grant)
        })
        .await
    }

    async fn expire_grants(&self, now: DateTime<Utc>) -> Result<usize> {
        // Called twice a second: the writer is taken only when a link is due to go.
        if self.read(move |c| expired_links(c, now)).await?.is_empty() {
            return Ok(0);
        }
        self.write(move |tx| {
            let mut removed = 0;
            for (dataset, department) in expired_links(tx, now)? {
                removed += usize::from(!sync_grant_link(tx, &dataset, &department, now)?);
            }
            if removed > 0 {
                bump_epoch(tx)?;
            }
            Ok(removed)
        })
        .await
    }

    async fn create_request(&self, request: SharingRequest) -> Result<SharingRequest> {
        self.write(move |tx| insert_work(tx, &request).map(|()| request)).await
    }

    async fn request(&self, id: &str) -> Result<SharingRequest> {
        let id = id.to_string();
        self.read(move |c| get_work(c, &id)).await
    }

    async fn list_requests(&self, query: WorkQuery, page: PageRequest) -> Result<Page<SharingRequest>> {
        self.read(move |c| list_work(c, &query, &page)).await
    }

    async fn approve_request(&self, request: SharingRequest, grant: Grant) -> Result<SharingRequest> {
        self.write(move |tx| {
            answer_work(tx, &request)?;
            if exists(tx, "SELECT 1 FROM grants WHERE id = ?1", &grant.id)? {
                return Err(Error::Conflict { kind: "grant", field: "id", value: grant.id.clone() });
            }
            tx.execute(
                "INSERT INTO grants (id, dataset, department, doc, expires_at, revoked_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
                params![
                    grant.id,
                    grant.dataset,
                    grant.department,
                    grant_doc(&grant)?,
                    grant.expires_at.as_ref().map(ts),
                    ts(&grant.created_at)
                ],
            )?;
            sync_grant_link(tx, &grant.dataset, &grant.department, crate::model::now())?;
            bump_epoch(tx)?;
            Ok(request)
        })
        .await
    }

    async fn reject_request(&self, request: SharingRequest) -> Result<SharingRequest> {
        self.write(move |tx| answer_work(tx, &request).map(|()| request)).await
    }

    async fn create_feedback(&self, feedback: Feedback) -> Result<Feedback> {
        self.write(move |tx| insert_work(tx, &feedback).map(|()| feedback)).await
    }

    async fn feedback(&self, id: &str) -> Result<Feedback> {
        let id = id.to_string();
        self.read(move |c| get_work(c, &id)).await
    }

    async fn list_feedback(&self, query: WorkQuery, page: PageRequest) -> Result<Page<Feedback>> {
        self.read(move |c| list_work(c, &query, &page)).await
    }

    async fn resolve_feedback(&self, feedback: Feedback) -> Result<Feedback> {
        self.write(move |tx| answer_work(tx, &feedback).map(|()| feedback)).await
    }

    async fn last_delta_version(&self, dataset: &str) -> Result<Option<i64>> {
        let dataset = dataset.to_string();
        self.read(move |c| {
            Ok(c.query_row("SELECT MAX(delta_version) FROM dataset_versions WHERE dataset = ?1", [&dataset], |r| {
                r.get(0)
            })?)
        })
        .await
    }
}

/// Copies the database behind `conn` into a new file `dest` with SQLite's online backup.
pub fn backup_connection(conn: &Connection, dest: &Path) -> Result<()> {
    let mut out = Connection::open(dest)?;
    let backup = rusqlite::backup::Backup::new(conn, &mut out)?;
    backup.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
    drop(backup);
    out.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(id_name: &str, title: &str, code: &str) -> Dataset {
        let input: NewDataset = serde_json::from_value(serde_json::json!({
            "department": "gongan", "name": id_name, "title": title, "resource_code": code,
            "classification": "basic", "sharing": "unconditional", "update_cycle": "daily",
            "primary_key": ["id_number"],
            "columns": [{"name": "id_number", "type": "string", "nullable": false, "title": "公民身份号码"}]
        }))
        .expect("json");
        crate::validate::dataset(input, chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")).expect("valid")
    }

    fn gongan() -> Department {
        Department {
            id: "gongan".into(),
            name: "公安局".into(),
            org_code: None,
            region: None,
            parent: None,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn search_finds_two_character_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("meta.db")).expect("open");
        store.create_department(gongan()).await.expect("department");
        store.create_dataset(dataset("population", "户籍人口基础信息", "1-01")).await.expect("ds");
        store.create_dataset(dataset("vehicles", "机动车登记信息", "1-02")).await.expect("ds");
        let find = |q: &str| {
            let store = store.clone();
            let q = q.to_string();
            async move {
                store
                    .search_datasets(DatasetQuery { q: Some(q), ..Default::default() }, PageRequest::first(10))
                    .await
                    .expect("search")
                    .items
                    .into_iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(find("人口").await, vec!["population"]);
        assert_eq!(find("户籍人口").await, vec!["population"]);
        assert_eq!(find("信息").await.len(), 2);
        assert_eq!(find("身份号码").await.len(), 2);
        assert!(find("人信").await.is_empty());
        assert_eq!(find("机").await, vec!["vehicles"]);
        assert_eq!(find("VEHIC").await, vec!["vehicles"]);
        assert!(find("\"").await.is_empty());
        let conflict = store.create_dataset(dataset("other", "x", "1-01")).await;
        assert!(matches!(conflict, Err(Error::Conflict { field: "resource_code", .. })));
    }

    #[tokio::test]
    async fn cached_point_reads_follow_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meta.db");
        let store = SqliteStore::open(&path).expect("open");
        store.create_department(gongan()).await.expect("department");
        store.create_dataset(dataset("population", "户籍人口基础信息", "1-01")).await.expect("ds");
        let title = |store: SqliteStore| async move { store.dataset("gongan.population").await.expect("read").title };
        assert_eq!(title(store.clone()).await, "户籍人口基础信息");
        assert_eq!(title(store.clone()).await, "户籍人口基础信息");
        // A write through the store is seen at once.
        let mut d = store.dataset("gongan.population").await.expect("read");
        d.title = "人口信息".into();
        store.update_dataset(d).await.expect("update");
        assert_eq!(title(store.clone()).await, "人口信息");
        // A write by another connection, as another process would make it,
        // is seen within EXTERNAL_CHECK.
        let other = Connection::open(&path).expect("other");
        other
            .execute(
                "UPDATE datasets SET doc = json_set(doc, '$.title', '另一进程') WHERE id = 'gongan.population'",
                [],
            )
            .expect("write");
        let settle = EXTERNAL_CHECK + std::time::Duration::from_millis(20);
        tokio::time::sleep(settle).await;
        assert_eq!(title(store.clone()).await, "另一进程");
        assert_eq!(title(store.clone()).await, "另一进程");
        other.execute("DELETE FROM datasets WHERE id = 'gongan.population'", []).expect("delete");
        tokio::time::sleep(settle).await;
        assert!(matches!(store.dataset("gongan.population").await, Err(Error::NotFound { .. })));
        // Credentials likewise: a token revoked by another process stops
        // authenticating, and one revoked through the store at once.
        let service = Principal {
            id: "s_benefits".into(),
            name: "待遇系统".into(),
            department: Some("gongan".into()),
            kind: PrincipalKind::Service,
            roles: vec![Role::Service],
            disabled: false,
            created_at: Utc::now(),
        };
        let token = |id: &str, hash: u8| NewToken {
            id: id.into(),
            principal: service.id.clone(),
            hash: [hash; 32],
            expires_at: None,
            certificate: None,
        };
        store.create_principal(service.clone(), token("t_1", 1)).await.expect("principal");
        store.create_token(token("t_2", 2)).await.expect("token");
        let revoked = |store: SqliteStore, hash: u8| async move {
            let (_, info) = store.authenticate([hash; 32]).await.expect("read").expect("known");
            info.revoked_at.is_some()
        };
        assert!(!revoked(store.clone(), 1).await);
        assert!(!revoked(store.clone(), 2).await);
        store.revoke_token("t_1").await.expect("revoke");
        assert!(revoked(store.clone(), 1).await);
        other.execute("UPDATE tokens SET revoked_at = '2026-12-05T00:00:00Z' WHERE id = 't_2'", []).expect("revoke");
        tokio::time::sleep(settle).await;
        assert!(revoked(store.clone(), 2).await);
    }
}
