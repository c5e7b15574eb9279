//! The push state: `<data-dir>/push.db` (SQLite, WAL).
//!
//! Rules, each rule's evaluation state (the subjects that matched and a
//! fingerprint of what they matched with), the outbox of events and their
//! deliveries. An evaluation stages its rows on a connection of its own
//! ([`Staging`]) and then, in one transaction, diffs them against the
//! state, writes the events and their deliveries and moves the state on
//! ([`Staging::commit`]): a crash leaves either all of it or none.
//!
//! The file is apart from `meta.db` so that the churn of deliveries (one
//! write per attempt, thousands a second) does not retire the metadata
//! store's point cache, which any commit to `meta.db` does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Rule, RuleDef, RuleState};

/// Schema versions, applied in order; never edit one that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
    CREATE TABLE rules (
        id          TEXT PRIMARY KEY,
        owner       TEXT NOT NULL,
        department  TEXT,
        name        TEXT NOT NULL,
        doc         TEXT NOT NULL,
        secret      BLOB,
        created_at  TEXT NOT NULL,
        deleted_at  TEXT
    );
    CREATE UNIQUE INDEX rules_owner_name ON rules(owner, name) WHERE deleted_at IS NULL;
    CREATE TABLE rule_state (
        rule          TEXT PRIMARY KEY REFERENCES rules(id),
        evaluations   INTEGER NOT NULL DEFAULT 0,
        seen          TEXT NOT NULL DEFAULT '{}',
        evaluated_at  TEXT,
        status        TEXT,
        error         TEXT,
        matched       INTEGER,
        last_events   INTEGER,
        events        INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE rule_subjects (
        rule         TEXT NOT NULL,
        subject      TEXT NOT NULL,
        fingerprint  BLOB NOT NULL,
        PRIMARY KEY (rule, subject)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        id          TEXT NOT NULL UNIQUE,
        rule        TEXT NOT NULL REFERENCES rules(id),
        subject     TEXT NOT NULL,
        day         TEXT NOT NULL,
        created_at  TEXT NOT NULL,
        body        TEXT NOT NULL
    );
    CREATE INDEX events_rule ON events(rule, seq);
    CREATE INDEX events_subject_day ON events(rule, subject, day);
    CREATE TABLE deliveries (
        event            INTEGER PRIMARY KEY REFERENCES events(seq),
        rule             TEXT NOT NULL,
        state            TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  INTEGER,
        last_attempt_at  TEXT,
        last_status      INTEGER,
        last_error       TEXT,
        delivered_at     TEXT
    );
    CREATE INDEX deliveries_due ON deliveries(rule, next_attempt_at) WHERE state = 'pending';
    CREATE INDEX deliveries_rule ON deliveries(rule, event);
"#,
    r#"
    ALTER TABLE rule_state ADD COLUMN read TEXT;
"#,
];

/// A push store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("push store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored document does not decode.
    #[error("push store: stored {what} does not decode: {source}")]
    Decode {
        /// What.
        what: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The file is newer than this gdx.
    #[error("push.db is at schema version {0}, newer than this gdx knows")]
    TooNew(usize),
    /// A name taken by another live rule of the same owner.
    #[error("the owner has a rule named {0} already")]
    Conflict(String),
    /// The blocking task failed.
    #[error("push store task failed: {0}")]
    Task(String),
    /// The directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Result of the push store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The push store (cheap to clone).
#[derive(Clone)]
pub struct PushStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PushStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushStore").field("path", &self.inner.path).finish()
    }
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

pub(crate) fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(s: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|source| StoreError::Decode { what, source })
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A delivery as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Delivery {
    /// The event delivered.
    pub event: String,
    /// The subject of the event.
    pub subject: String,
    /// `pending`, `delivered`, `dead` (given up on after the last retry) or
    /// `cancelled` (the rule was deleted).
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// HTTP status of the last attempt, if it got an answer.
    pub last_status: Option<i64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Whether it was given up on (dead-lettered).
    pub dead_lettered: bool,
    /// When the receiver accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// An event as stored: its place in the outbox and the body sent.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Position in the outbox (for paging).
    pub seq: i64,
    /// The body of the webhook request (the event as JSON).
    pub body: String,
    /// Delivery state, if the rule has a webhook.
    pub delivery: Option<String>,
}

/// A delivery that is due.
#[derive(Debug, Clone)]
pub struct Due {
    /// The event's position.
    pub seq: i64,
    /// The event id (the `webhook-id`).
    pub id: String,
    /// The subject.
    pub subject: String,
    /// The body to send.
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The event's position.
    pub seq: i64,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Whether the receiver accepted it.
    pub delivered: bool,
    /// When to try again (None: give up, if not delivered).
    pub retry_at: Option<DateTime<Utc>>,
}

/// A rule's row as the engine needs it: the rule, its state and its sealed secret.
pub type RuleRow = (Rule, RuleState, Option<Vec<u8>>);

impl PushStore {
    /// Opens (creating and migrating) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        }
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        let current: usize = writer.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
        if current > MIGRATIONS.len() {
            return Err(StoreError::TooNew(current));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let tx = writer.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        let reader = Connection::open(path)?;
        configure(&reader)?;
        Ok(Self {
            inner: Arc::new(Inner { path: path.to_path_buf(), writer: Mutex::new(writer), reader: Mutex::new(reader) }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&lock(&inner.reader)))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Inserts a rule; `Conflict` when its owner has a live rule of that name.
    pub async fn create_rule(&self, rule: Rule, sealed_secret: Option<Vec<u8>>) -> Result<Rule> {
        self.write(move |tx| {
            let taken: bool = tx
                .prepare_cached("SELECT 1 FROM rules WHERE owner = ?1 AND name = ?2 AND deleted_at IS NULL")?
                .exists(params![rule.owner, rule.def.name])?;
            if taken {
                return Err(StoreError::Conflict(rule.def.name.clone()));
            }
            let doc = serde_json::to_string(&rule.def).map_err(|source| StoreError::Decode { what: "rule", source })?;
            tx.execute(
                "INSERT INTO rules (id, owner, department, name, doc, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![rule.id, rule.owner, rule.department, rule.def.name, doc, sealed_secret, ts(&rule.created_at)],
            )?;
            tx.execute("INSERT INTO rule_state (rule) VALUES (?1)", params![rule.id])?;
            Ok(rule)
        })
        .await
    }

    /// One live rule with its state and sealed secret.
    pub async fn rule(&self, id: &str) -> Result<Option<RuleRow>> {
        let id = id.to_string();
        self.read(move |c| {
            let mut rows = rules_where(c, "r.id = ?1", params![id])?;
            Ok(rows.pop())
        })
        .await
    }

    /// Live rules, of one owner or all of them, by id.
    pub async fn rules(&self, owner: Option<String>) -> Result<Vec<RuleRow>> {
        self.read(move |c| match owner {
            Some(o) => rules_where(c, "r.owner = ?1", params![o]),
            None => rules_where(c, "1 = 1", params![]),
        })
        .await
    }

    /// Deletes a rule: its state and subjects go, pending deliveries are
    /// cancelled; its events stay (they were sent, or may have been).
    pub async fn delete_rule(&self, id: &str, at: DateTime<Utc>) -> Result<bool> {
        let id = id.to_string();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE rules SET deleted_at = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![id, ts(&at)],
            )?;
            tx.execute("DELETE FROM rule_subjects WHERE rule = ?1", params![id])?;
            tx.execute(
                "UPDATE deliveries SET state = 'cancelled', next_attempt_at = NULL WHERE rule = ?1 AND state = 'pending'",
                params![id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// Removes events created before `before` whose delivery is settled
    /// (delivered, dead or cancelled) or that had none, with their
    /// deliveries; the events removed.
    pub async fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let cutoff = ts(&before);
        self.write(move |tx| {
            // Events are numbered in time order: the last one old enough bounds the scan.
            let last: Option<i64> =
                tx.query_row("SELECT max(seq) FROM events WHERE created_at < ?1", params![cutoff], |r| r.get(0))?;
            let Some(last) = last else { return Ok(0) };
            tx.execute("DELETE FROM deliveries WHERE event <= ?1 AND state != 'pending'", params![last])?;
            let n = tx.execute(
                "DELETE FROM events WHERE seq <= ?1 AND created_at < ?2 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event = events.seq)",
                params![last, cutoff],
            )?;
            Ok(n as u64)
        })
        .await
    }

    /// Records a failed evaluation (the state's subjects stay as they were).
    pub async fn record_failure(
        &self,
        rule: &str,
        seen: BTreeMap<String, i64>,
        at: DateTime<Utc>,
        error: String,
    ) -> Result<()> {
        let rule = rule.to_string();
        self.write(move |tx| {
            let seen =
                serde_json::to_string(&seen).map_err(|source| StoreError::Decode { what: "versions", source })?;
            tx.execute(
                "UPDATE rule_state SET evaluations = evaluations + 1, seen = ?2, evaluated_at = ?3, status = 'failed', \
                 error = ?4, last_events = 0 WHERE rule = ?1",
                params![rule, seen, ts(&at), error],
            )?;
            Ok(())
        })
        .await
    }

    /// A rule's events after position `after`, oldest first, at most `limit`.
    pub async fn events(&self, rule: &str, after: i64, limit: usize) -> Result<Vec<StoredEvent>> {
        let rule = rule.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.seq, e.body, d.state FROM events e LEFT JOIN deliveries d ON d.event = e.seq \
                 WHERE e.rule = ?1 AND e.seq > ?2 ORDER BY e.seq LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![rule, after, limit as i64], |r| {
                Ok(StoredEvent { seq: r.get(0)?, body: r.get(1)?, delivery: r.get(2)? })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The position of an event of a rule, by id.
    pub async fn event_seq(&self, rule: &str, id: &str) -> Result<Option<i64>> {
        let (rule, id) = (rule.to_string(), id.to_string());
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT seq FROM events WHERE rule = ?1 AND id = ?2")?
                .query_row(params![rule, id], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    /// A rule's deliveries after position `after`, oldest first, optionally in one state.
    pub async fn deliveries(
        &self,
        rule: &str,
        state: Option<String>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Delivery)>> {
        let rule = rule.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.event, e.id, e.subject, d.state, d.attempts, d.last_status, d.last_error, d.last_attempt_at, \
                 d.next_attempt_at, d.delivered_at FROM deliveries d JOIN events e ON e.seq = d.event \
                 WHERE d.rule = ?1 AND d.event > ?2 AND (?3 IS NULL OR d.state = ?3) ORDER BY d.event LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![rule, after, state, limit as i64], |r| {
                let state: String = r.get(3)?;
                let next: Option<i64> = r.get(8)?;
                Ok((
                    r.get(0)?,
                    Delivery {
                        event: r.get(1)?,
                        subject: r.get(2)?,
                        dead_lettered: state == "dead",
                        state,
                        attempts: r.get(4)?,
                        last_status: r.get(5)?,
                        last_error: r.get(6)?,
                        last_attempt_at: r.get::<_, Option<String>>(7)?.as_deref().map(parse_ts).transpose()?,
                        next_attempt_at: next.and_then(DateTime::from_timestamp_millis),
                        delivered_at: r.get::<_, Option<String>>(9)?.as_deref().map(parse_ts).transpose()?,
                    },
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// For each `(rule, limit, skip)`: up to `limit` deliveries of the rule
    /// due by `now`, soonest first, leaving out `skip`; all in one read.
    pub async fn due_per_rule(
        &self,
        wanted: Vec<(String, usize, std::collections::HashSet<i64>)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Vec<Due>)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.event, e.id, e.subject, e.body, d.attempts FROM deliveries d JOIN events e ON e.seq = d.event \
                 WHERE d.rule = ?1 AND d.state = 'pending' AND d.next_attempt_at <= ?2 \
                 ORDER BY d.next_attempt_at, d.event LIMIT ?3",
            )?;
            let mut all = Vec::with_capacity(wanted.len());
            for (rule, limit, skip) in wanted {
                let rows = stmt.query_map(params![rule, now.timestamp_millis(), (limit + skip.len()) as i64], |r| {
                    Ok(Due { seq: r.get(0)?, id: r.get(1)?, subject: r.get(2)?, body: r.get(3)?, attempts: r.get(4)? })
                })?;
                let mut out = Vec::with_capacity(limit);
                for d in rows {
                    let d = d?;
                    if !skip.contains(&d.seq) {
                        out.push(d);
                    }
                    if out.len() >= limit {
                        break;
                    }
                }
                all.push((rule, out));
            }
            Ok(all)
        })
        .await
    }

    /// When the soonest pending delivery of any live rule is due.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        self.read(|c| {
            let ms: Option<i64> = c
                .prepare_cached("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'pending'")?
                .query_row([], |r| r.get(0))?;
            Ok(ms.and_then(DateTime::from_timestamp_millis))
        })
        .await
    }

    /// Records attempts, in one transaction.
    pub async fn record_attempts(&self, attempts: Vec<Attempt>) -> Result<()> {
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?2, last_status = ?3, last_error = ?4, \
                 state = ?5, next_attempt_at = ?6, delivered_at = ?7 WHERE event = ?1 AND state = 'pending'",
            )?;
            for a in &attempts {
                let (state, next, delivered) = if a.delivered {
                    ("delivered", None, Some(ts(&a.at)))
                } else if let Some(r) = a.retry_at {
                    ("pending", Some(r.timestamp_millis()), None)
                } else {
                    ("dead", None, None)
                };
                stmt.execute(params![a.seq, ts(&a.at), a.status, a.error, state, next, delivered])?;
            }
            Ok(())
        })
        .await
    }

    /// Puts a dead-lettered delivery back in the queue, due now; `false` if
    /// the rule has no such dead delivery.
    pub async fn retry(&self, rule: &str, event_id: &str, now: DateTime<Utc>) -> Result<bool> {
        let (rule, event_id) = (rule.to_string(), event_id.to_string());
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?3 \
                 WHERE rule = ?1 AND state = 'dead' AND event = (SELECT seq FROM events WHERE id = ?2)",
                params![rule, event_id, now.timestamp_millis()],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// A connection to stage one evaluation's rows on.
    pub fn staging(&self) -> Result<Staging> {
        let conn = Connection::open(&self.inner.path)?;
        configure(&conn)?;
        conn.execute_batch(
            "CREATE TEMP TABLE staged (subject TEXT PRIMARY KEY, fingerprint BLOB NOT NULL, data TEXT NOT NULL) WITHOUT ROWID; \
             CREATE TEMP TABLE candidates (subject TEXT PRIMARY KEY) WITHOUT ROWID;",
        )?;
        Ok(Staging { conn, rows: 0, partial: None })
    }
}

fn rules_where(c: &Connection, condition: &str, params: impl rusqlite::Params) -> Result<Vec<RuleRow>> {
    let sql = format!(
        "SELECT r.id, r.owner, r.department, r.doc, r.secret, r.created_at, s.evaluations, s.seen, s.evaluated_at, \
         s.status, s.error, s.matched, s.last_events, s.events, s.read FROM rules r JOIN rule_state s ON s.rule = r.id \
         WHERE r.deleted_at IS NULL AND {condition} ORDER BY r.id"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
            parse_ts(&r.get::<_, String>(5)?)?,
            r.get::<_, i64>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, Option<String>>(8)?.as_deref().map(parse_ts).transpose()?,
            r.get::<_, Option<String>>(9)?,
            r.get::<_, Option<String>>(10)?,
            r.get::<_, Option<i64>>(11)?,
            r.get::<_, Option<i64>>(12)?,
            r.get::<_, i64>(13)?,
            r.get::<_, Option<String>>(14)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            owner,
            department,
            doc,
            secret,
            created_at,
            evaluations,
            seen,
            evaluated_at,
            status,
            error,
            matched,
            last,
            events,
            read,
        ) = row?;
        let def: RuleDef = decode("rule", &doc)?;
        let state = RuleState {
            evaluations,
            seen: decode("versions", &seen)?,
            evaluated_at,
            status,
            error,
            matched,
            last_events: last,
            events,
            read,
        };
        out.push((Rule { id, owner, department, def, created_at }, state, secret));
    }
    Ok(out)
}

/// One evaluation's rows, staged apart from the state until [`Staging::commit`].
pub struct Staging {
    conn: Connection,
    rows: u64,
    /// For an evaluation of changed rows only: the subjects matching before it.
    partial: Option<i64>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("rows", &self.rows).finish()
    }
}

/// What an evaluation's commit decides per subject that newly matches or
/// whose data changed: the event to write, or none.
pub struct NewEvent {
    /// The event id.
    pub id: String,
    /// The body to send.
    pub body: String,
}

/// What committing an evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Evaluated {
    /// Subjects matching now.
    pub matched: u64,
    /// Subjects that newly matched or whose data changed.
    pub changed: u64,
    /// Events written.
    pub events: u64,
    /// Changes left for later by `max_per_subject` (they are pushed once the day allows).
    pub held: u64,
    /// Subjects that no longer match.
    pub gone: u64,
}

impl Staging {
    /// Stages rows `(subject, fingerprint, data)`. A subject that appears
    /// more than once keeps the row with the smallest fingerprint, so the
    /// outcome does not depend on the order rows arrive in.
    pub fn stage(&mut self, rows: &[(String, [u8; 16], String)]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO temp.staged (subject, fingerprint, data) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(subject) DO UPDATE SET fingerprint = excluded.fingerprint, data = excluded.data \
                 WHERE excluded.fingerprint < staged.fingerprint",
            )?;
            for (subject, fp, data) in rows {
                stmt.execute(params![subject, &fp[..], data])?;
            }
        }
        tx.commit()?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Diffs the staged rows against the rule's state and, in one
    /// transaction, writes an event (and a delivery, with `deliver`) per
    /// subject that newly matches or whose fingerprint changed, moves the
    /// state on, forgets subjects that no longer match and records the
    /// evaluation. `event` builds each event from `(subject, data)`, or
    /// declines to (the first evaluation without backfill). With
    /// `max_per_day`, a subject that had that many events of the rule on
    /// `day` gets none and its state stays, so the change is pushed later.
    /// Makes this an evaluation of the rows a commit changed: subjects not
    /// staged keep their state, and only `candidates` (subjects the changed
    /// rows matched before) that are not staged stop matching. `matched` is
    /// the count before.
    pub fn partial(&mut self, matched: i64) {
        self.partial = Some(matched);
    }

    /// Records subjects the changed rows matched before the change.
    pub fn candidates(&mut self, subjects: &[String]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT OR IGNORE INTO temp.candidates (subject) VALUES (?1)")?;
            for s in subjects {
                stmt.execute(params![s])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn commit(
        mut self,
        rule: &str,
        seen: &BTreeMap<String, i64>,
        at: DateTime<Utc>,
        day: &str,
        deliver: bool,
        max_per_day: Option<u32>,
        mut event: impl FnMut(&str, &str) -> Option<NewEvent>,
    ) -> Result<Evaluated> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let staged: u64 = tx.query_row("SELECT count(*) FROM temp.staged", [], |r| r.get(0))?;
        let mut out = Evaluated { matched: staged, ..Default::default() };
        let mut added = 0i64;
        let at_s = ts(&at);
        let now_ms = at.timestamp_millis();
        {
            let mut changed = tx.prepare(
                "SELECT s.subject, s.fingerprint, s.data, r.fingerprint IS NULL FROM temp.staged s \
                 LEFT JOIN main.rule_subjects r ON r.rule = ?1 AND r.subject = s.subject \
                 WHERE r.fingerprint IS NULL OR r.fingerprint != s.fingerprint",
            )?;
            let mut count_today =
                tx.prepare_cached("SELECT count(*) FROM main.events WHERE rule = ?1 AND subject = ?2 AND day = ?3")?;
            let mut insert_event = tx.prepare_cached(
                "INSERT INTO main.events (id, rule, subject, day, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut insert_delivery = tx.prepare_cached(
                "INSERT INTO main.deliveries (event, rule, state, next_attempt_at) VALUES (?1, ?2, 'pending', ?3)",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO main.rule_subjects (rule, subject, fingerprint) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(rule, subject) DO UPDATE SET fingerprint = excluded.fingerprint",
            )?;
            let mut rows = changed.query(params![rule])?;
            while let Some(r) = rows.next()? {
                let subject: String = r.get(0)?;
                let fp: Vec<u8> = r.get(1)?;
                let data: String = r.get(2)?;
                let new: bool = r.get(3)?;
                out.changed += 1;
                if let Some(max) = max_per_day {
                    let n: i64 = count_today.query_row(params![rule, subject, day], |r| r.get(0))?;
                    if n >= i64::from(max) {
                        out.held += 1;
                        continue;
                    }
                }
                if let Some(e) = event(&subject, &data) {
                    insert_event.execute(params![e.id, rule, subject, day, at_s, e.body])?;
                    if deliver {
                        insert_delivery.execute(params![tx.last_insert_rowid(), rule, now_ms])?;
                    }
                    out.events += 1;
                }
                upsert.execute(params![rule, subject, fp])?;
                added += i64::from(new);
            }
        }
        out.gone = match self.partial {
            None => tx.execute(
                "DELETE FROM main.rule_subjects WHERE rule = ?1 AND NOT EXISTS \
                 (SELECT 1 FROM temp.staged s WHERE s.subject = rule_subjects.subject)",
                params![rule],
            )?,
            Some(_) => tx.execute(
                "DELETE FROM main.rule_subjects WHERE rule = ?1 \
                 AND subject IN (SELECT subject FROM temp.candidates) \
                 AND subject NOT IN (SELECT subject FROM temp.staged)",
                params![rule],
            )?,
        } as u64;
        if let Some(before) = self.partial {
            out.matched = u64::try_from(before + added - out.gone as i64).unwrap_or(0);
        }
        let seen = serde_json::to_string(seen).map_err(|source| StoreError::Decode { what: "versions", source })?;
        tx.execute(
            "UPDATE rule_state SET evaluations = evaluations + 1, seen = ?2, evaluated_at = ?3, status = 'ok', \
             error = NULL, matched = ?4, last_events = ?5, events = events + ?5, read = ?6 WHERE rule = ?1",
            params![
                rule,
                seen,
                at_s,
                out.matched as i64,
                out.events as i64,
                if self.partial.is_some() { "changes" } else { "all" }
            ],
        )?;
        tx.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Trigger;

    fn rule(id: &str) -> Rule {
        Rule {
            id: id.into(),
            owner: "sv".into(),
            department: Some("renshe".into()),
            def: RuleDef {
                name: id.into(),
                sql: "SELECT 1 AS k".into(),
                subject_column: "k".into(),
                message: None,
                trigger: Trigger::OnChange(vec!["gongan.people".into()]),
                webhook_url: Some("https://svc.example/hook".into()),
                purpose: "test".into(),
                backfill: true,
                max_per_subject: None,
            },
            created_at: Utc::now(),
        }
    }

    async fn evaluate(
        store: &PushStore,
        rows: &[(&str, u8)],
        partial: Option<(i64, &[&str])>,
        at: DateTime<Utc>,
    ) -> Evaluated {
        let store = store.clone();
        let rows: Vec<(String, [u8; 16], String)> =
            rows.iter().map(|(s, fp)| (s.to_string(), [*fp; 16], format!("{{\"k\":\"{s}\"}}"))).collect();
        let partial = partial.map(|(m, c)| (m, c.iter().map(|s| s.to_string()).collect::<Vec<_>>()));
        tokio::task::spawn_blocking(move || {
            let mut staging = store.staging().expect("staging");
            staging.stage(&rows).expect("stage");
            if let Some((matched, candidates)) = partial {
                staging.candidates(&candidates).expect("candidates");
                staging.partial(matched);
            }
            let mut n = 0;
            staging
                .commit("r1", &BTreeMap::new(), at, "2026-12-01", true, None, |_, _| {
                    n += 1;
                    Some(NewEvent { id: format!("evt_{}_{n}", at.timestamp_millis()), body: "{}".into() })
                })
                .expect("commit")
        })
        .await
        .expect("join")
    }

    #[tokio::test]
    async fn partial_commits_touch_only_changed_subjects_and_settled_events_expire() {
        let dir = tempfile::tempdir().expect("dir");
        let store = PushStore::open(&dir.path().join("push.db")).expect("open");
        store.create_rule(rule("r1"), None).await.expect("rule");
        let old = Utc::now() - chrono::Duration::days(100);
        let e = evaluate(&store, &[("a", 1), ("b", 1), ("c", 1)], None, old).await;
        assert_eq!((e.matched, e.events, e.gone), (3, 3, 0));
        // Changed rows only: b changed, d is new, c may have stopped matching
        // (a candidate, not staged), a is untouched and stays.
        let e = evaluate(&store, &[("b", 2), ("d", 1)], Some((3, &["b", "c"])), Utc::now()).await;
        assert_eq!((e.matched, e.changed, e.events, e.gone), (3, 2, 2, 1));
        let state = store.rule("r1").await.expect("read").expect("rule").1;
        assert_eq!((state.matched, state.read.as_deref()), (Some(3), Some("changes")));
        // A full evaluation agrees: a, b, d match.
        let e = evaluate(&store, &[("a", 1), ("b", 2), ("d", 1)], None, Utc::now()).await;
        assert_eq!((e.matched, e.events, e.gone), (3, 0, 0));

        // Retention: of the three old events, the delivered and the dead go; the pending one stays.
        let mut due = store.due_per_rule(vec![("r1".into(), 10, Default::default())], Utc::now()).await.expect("due");
        let due = due.pop().expect("the rule's deliveries").1;
        assert_eq!(due.len(), 5);
        let old_seqs: Vec<i64> = due
            .iter()
            .filter(|d| d.id.starts_with(&format!("evt_{}", old.timestamp_millis())))
            .map(|d| d.seq)
            .collect();
        assert_eq!(old_seqs.len(), 3);
        let attempt = |seq, delivered, retry_at| Attempt {
            seq,
            at: Utc::now(),
            status: Some(if delivered { 204 } else { 500 }),
            error: None,
            delivered,
            retry_at,
        };
        store
            .record_attempts(vec![
                attempt(old_seqs[0], true, None),
                attempt(old_seqs[1], false, None),
                attempt(old_seqs[2], false, Some(Utc::now())),
            ])
            .await
            .expect("attempts");
        assert_eq!(store.prune(Utc::now() - chrono::Duration::days(90)).await.expect("prune"), 2);
        let left = store.events("r1", 0, 100).await.expect("events");
        assert_eq!(left.len(), 3, "the pending old event and the two recent ones");
        assert_eq!(store.prune(Utc::now() - chrono::Duration::days(90)).await.expect("prune"), 0);
    }
}
