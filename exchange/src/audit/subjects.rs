//! The subject index: which records name each subject hash, for the data
//! tracker and the `subject` filter of [`super::AuditLog::list`].
//!
//! Subject hashes are uniformly spread, so indexing them in the chain's own
//! transaction cost one randomly placed B-tree page per record per commit,
//! written and fsynced on the path every audited request waits for. The
//! index lives instead in a file of its own beside the log
//! (`audit.db` → `audit-subjects.db`), written by its own thread behind the
//! chain: the chain writer hands it the subjects of each committed batch,
//! and it inserts them in sorted runs every [`FLUSH_EVERY`], with the seq
//! and hash of the last record covered (the mark) in the same transaction.
//!
//! The index is split in generations of about [`GEN_REFS`] references: a
//! row is `(gen, key, seq)`, where `key` is the first 64 bits of the
//! SHA-256 of the subject hash ([`key_of`]). Inserts only ever go to the
//! newest generation, a B-tree of a few megabytes that stays in the page
//! cache, so a flush rewrites at most that many pages, however large the
//! index has grown. One B-tree over every reference rewrote about one page
//! per reference once it outgrew the cache: 50-90 MB/s of writes at 15,000
//! lookups/s, whose I/O delayed the chain's fsyncs and set the lookup p99
//! (`docs/performance.md`). A reader looks a key up in each generation
//! (a few dozen at ten million references) and checks each record found
//! against its JSON, so that a shared key prefix cannot match another
//! subject's records.
//!
//! The index is derived from the records and never ahead of them. Readers
//! take the records up to the mark from the index and search the records
//! after it (at most a flush behind while the server runs) in their JSON, so
//! an answer is complete whatever the index's lag. At start the indexer
//! catches up from the log; an index whose mark does not match the log (a
//! restored or replaced `audit.db`) is emptied and rebuilt. The file is not
//! backed up: it is rebuilt from the log. The verifier checks that the index
//! agrees with the records up to its mark.
//!
//! The indexer also checkpoints the log's WAL every [`CHECKPOINT_EVERY`]
//! while records arrive, and after each flush (passively: it never waits
//! for, nor holds up, the chain writer), so that the writer's commits are not
//! the ones that copy pages into the database file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use sha2::{Digest, Sha256};

use super::{AuditError, GENESIS, Record, schema};

/// How often the indexer writes what the chain writer has handed it.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How often the log's WAL is checkpointed while records arrive. Under load
/// the chain writer appends some 20 pages a commit (a leaf of each B-tree it
/// touches) and would reach its own checkpoint threshold in under a second,
/// then copy up to 16,384 pages and fsync the database file on the path
/// every audited request waits for: stalls of 10-20 ms, once a second, that
/// set the lookup p99. Checkpointed every 100 ms, the writer's own
/// checkpoints only finish what is left (see `docs/performance.md`).
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// At most this many references are held before they are written.
pub const MAX_PENDING: usize = 1 << 16;

/// The index writer's page cache, in KiB.
const INDEX_CACHE_KIB: i64 = 32 * 1024;

/// Records read per step when catching up from the log.
const CATCH_UP_STEP: i64 = 4096;

/// References per generation of the index: a generation is closed once it
/// holds this many (the flush that crosses the bound completes it). At some
/// 18 bytes a reference, the open generation stays well inside the
/// indexer's page cache.
pub const GEN_REFS: u64 = 1 << 18;

/// The schema version of the index file. Version 1 had one B-tree of
/// `(value, seq)`; a file of version 1 is emptied and rebuilt.
const VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE subject_refs (
    gen INTEGER NOT NULL,
    key INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (gen, key, seq)
) WITHOUT ROWID;
CREATE INDEX subject_refs_seq ON subject_refs (seq);
CREATE TABLE IF NOT EXISTS subject_mark (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
PRAGMA user_version = 2;
";

/// The schema name under which readers attach the index.
pub const SCHEMA_NAME: &str = "subj";

/// The index file of the log at `log`: `audit.db` → `audit-subjects.db`.
pub fn path_of(log: &Path) -> PathBuf {
    let stem = log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "audit".into());
    log.with_file_name(format!("{stem}-subjects.db"))
}

/// What one committed batch of the chain names: the last record's seq and
/// hash, and the subjects of each record that names any.
#[derive(Debug)]
pub struct Committed {
    pub through: u64,
    pub hash: String,
    pub refs: Vec<(u64, Vec<String>)>,
}

fn open_error(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |e| AuditError::Open { path: path.to_path_buf(), reason: e.to_string() }
}

/// Opens (creating if absent) the index of the log at `log` for writing.
/// WAL with `synchronous=NORMAL`: a power cut may lose the last flushes,
/// never consistency, and what is lost is caught up from the log at start.
pub fn open_writer(log: &Path) -> Result<Connection, AuditError> {
    let path = path_of(log);
    let err = open_error(&path);
    let mut conn = Connection::open(&path).map_err(&err)?;
    conn.busy_timeout(schema::BUSY_TIMEOUT).map_err(&err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(&err)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(&err)?;
    // A flush inserts thousands of subjects at random places of the B-tree.
    conn.pragma_update(None, "cache_size", -INDEX_CACHE_KIB).map_err(&err)?;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&err)?;
    match version {
        0 | 1 => {
            // Version 1's references are dropped; the indexer rebuilds them
            // from the log (the mark goes back to the genesis).
            tx.execute_batch("DROP TABLE IF EXISTS subject_refs").map_err(&err)?;
            tx.execute_batch(SCHEMA).map_err(&err)?;
            tx.execute("INSERT OR REPLACE INTO subject_mark (one, seq, hash) VALUES (1, 0, ?1)", [GENESIS])
                .map_err(&err)?;
        }
        VERSION => {}
        found => return Err(AuditError::Schema { path: path.clone(), found, known: VERSION }),
    }
    tx.commit().map_err(&err)?;
    Ok(conn)
}

/// Attaches the index of the log at `log` to a read connection of the log as
/// [`SCHEMA_NAME`], read-only, when it exists; says whether it did.
pub fn attach(conn: &Connection, log: &Path) -> Result<bool, AuditError> {
    let path = path_of(log);
    if !path.is_file() {
        return Ok(false);
    }
    let err = open_error(&path);
    let uri = format!("file:{}?mode=ro", uri_path(&path));
    conn.execute(&format!("ATTACH DATABASE ?1 AS {SCHEMA_NAME}"), [uri]).map_err(&err)?;
    let version: i64 = conn.query_row(&format!("PRAGMA {SCHEMA_NAME}.user_version"), [], |r| r.get(0)).map_err(&err)?;
    if version != VERSION {
        conn.execute(&format!("DETACH DATABASE {SCHEMA_NAME}"), []).map_err(&err)?;
        return Ok(false);
    }
    Ok(true)
}

/// A path as the path part of an SQLite `file:` URI.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for b in path.to_string_lossy().bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

/// Whether the index is attached to `conn`.
pub fn attached(conn: &Connection) -> bool {
    conn.query_row("SELECT count(*) FROM pragma_database_list WHERE name = ?1", [SCHEMA_NAME], |r| r.get::<_, i64>(0))
        .is_ok_and(|n| n > 0)
}

/// The mark of an attached index: the last record it covers.
pub fn mark(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(&format!("SELECT seq FROM {SCHEMA_NAME}.subject_mark"), [], |r| r.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

/// The subjects a record names, once each.
pub fn subjects_of(record: &Record) -> BTreeSet<&str> {
    record.subjects.iter().map(String::as_str).collect()
}

/// The index key of a subject hash: the first 64 bits of its SHA-256.
pub fn key_of(subject: &str) -> i64 {
    let digest = Sha256::digest(subject.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The newest generation of the index and how many references it holds
/// (generation 0 when the index is empty).
fn open_generation(conn: &Connection) -> rusqlite::Result<(i64, u64)> {
    let newest: i64 = conn.query_row("SELECT coalesce(max(gen), 0) FROM subject_refs", [], |r| r.get(0))?;
    let refs: u64 = conn.query_row("SELECT count(*) FROM subject_refs WHERE gen = ?1", [newest], |r| r.get(0))?;
    Ok((newest, refs))
}

/// The thread that keeps the index: catches up from the log, then writes
/// what the chain writer hands it.
pub struct Indexer {
    conn: Connection,
    log: PathBuf,
    /// A connection to the log, for its checkpoints (opened when first needed).
    checkpointer: Option<Connection>,
    mark: u64,
    /// The generation inserts go to, and how many references it holds.
    generation: i64,
    generation_refs: u64,
    /// Set when a write failed: the next step catches up from the log
    /// instead of trusting what was handed over meanwhile.
    behind: bool,
}

impl Indexer {
    pub fn new(conn: Connection, log: PathBuf) -> Self {
        Self { conn, log, checkpointer: None, mark: 0, generation: 0, generation_refs: 0, behind: true }
    }

    /// Copies what the log's WAL holds into its database file, as far as
    /// readers allow, without waiting for any lock.
    fn checkpoint_log(&mut self) {
        if self.checkpointer.is_none() {
            match Connection::open_with_flags(&self.log, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE) {
                Ok(c) => self.checkpointer = Some(c),
                Err(e) => {
                    tracing::warn!(path = %self.log.display(), error = %e, "the audit log cannot be checkpointed");
                    return;
                }
            }
        }
        if let Some(c) = &self.checkpointer
            && let Err(e) = c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            tracing::debug!(path = %self.log.display(), error = %e, "an audit log checkpoint did not complete");
        }
    }

    /// Logs a failure once (not again while the index stays behind).
    fn failed(&mut self, error: &dyn std::fmt::Display) {
        if self.behind {
            tracing::debug!(path = %path_of(&self.log).display(), %error, "the audit subject index is still behind");
        } else {
            tracing::error!(path = %path_of(&self.log).display(), %error, "the audit subject index cannot be written");
        }
        self.behind = true;
    }

    /// Runs until the chain writer is gone, writing what it handed over.
    pub fn run(mut self, updates: mpsc::Receiver<Committed>) {
        let mut pending: Vec<(String, u64)> = Vec::new();
        let mut last_checkpoint = Instant::now();
        loop {
            if self.behind {
                // Updates handed over meanwhile are in the log too.
                while updates.try_recv().is_ok() {}
                if let Err(e) = self.catch_up() {
                    self.failed(&e);
                }
            }
            let first = if self.behind {
                // Try again in a while, or when the chain moves.
                match updates.recv_timeout(FLUSH_EVERY * 5) {
                    Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match updates.recv() {
                    Ok(update) => update,
                    Err(_) => break,
                }
            };
            let deadline = Instant::now() + FLUSH_EVERY;
            let mut next = Some(first);
            let mut disconnected = false;
            let mut through: Option<(u64, String)> = None;
            while let Some(update) = next.take() {
                if update.through > self.mark {
                    for (seq, subjects) in update.refs {
                        if seq > self.mark {
                            pending.extend(subjects.into_iter().map(|s| (s, seq)));
                        }
                    }
                    through = Some((update.through, update.hash));
                }
                if pending.len() >= MAX_PENDING {
                    break;
                }
                if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
                    self.checkpoint_log();
                    last_checkpoint = Instant::now();
                }
                match updates.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(update) => next = Some(update),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
                }
            }
            if let Some((seq, hash)) = through
                && let Err(e) = self.write(&pending, seq, &hash)
            {
                self.failed(&e);
            }
            pending.clear();
            self.checkpoint_log();
            last_checkpoint = Instant::now();
            if disconnected {
                break;
            }
        }
        if self.behind
            && let Err(e) = self.catch_up()
        {
            self.failed(&e);
        }
        tracing::debug!(path = %path_of(&self.log).display(), "the audit subject indexer stopped");
    }

    /// Writes `refs` and moves the mark to record `seq` with `hash`, in one transaction.
    fn write(&mut self, refs: &[(String, u64)], seq: u64, hash: &str) -> rusqlite::Result<()> {
        // Sorted, the inserts walk the open generation once from left to right.
        let mut keys: Vec<(i64, u64)> = refs.iter().map(|(value, s)| (key_of(value), *s)).collect();
        keys.sort_unstable();
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0;
        {
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO subject_refs (gen, key, seq) VALUES (?1, ?2, ?3)")?;
            for (key, s) in &keys {
                inserted += insert.execute(params![self.generation, key, s])? as u64;
            }
            tx.execute("UPDATE subject_mark SET seq = ?1, hash = ?2", params![seq, hash])?;
        }
        tx.commit()?;
        self.mark = seq;
        self.generation_refs += inserted;
        if self.generation_refs >= GEN_REFS {
            self.generation += 1;
            self.generation_refs = 0;
        }
        Ok(())
    }

    /// Reads the mark, empties an index that does not belong to the log, and
    /// indexes the records after the mark.
    fn catch_up(&mut self) -> Result<(), AuditError> {
        let log_path = self.log.clone();
        let index_path = path_of(&log_path);
        let log = schema::open_log_reader(&log_path)?;
        let read = |e: rusqlite::Error| AuditError::Read { path: log_path.clone(), reason: e.to_string() };
        let index_error =
            |e: rusqlite::Error| AuditError::Unavailable { path: index_path.clone(), reason: e.to_string() };
        let (mut mark, hash): (u64, String) = self
            .conn
            .query_row("SELECT seq, hash FROM subject_mark", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(index_error)?;
        let at_mark: Option<String> = if mark == 0 {
            Some(GENESIS.to_string())
        } else {
            log.query_row("SELECT hash FROM audit_log WHERE seq = ?1", [mark], |r| r.get(0)).optional().map_err(read)?
        };
        if at_mark.as_deref() != Some(hash.as_str()) {
            tracing::warn!(
                path = %index_path.display(),
                mark,
                "the audit subject index does not match the log; rebuilding it"
            );
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(index_error)?;
            tx.execute_batch("DELETE FROM subject_refs").map_err(index_error)?;
            tx.execute("UPDATE subject_mark SET seq = 0, hash = ?1", [GENESIS]).map_err(index_error)?;
            tx.commit().map_err(index_error)?;
            mark = 0;
        }
        self.mark = mark;
        (self.generation, self.generation_refs) = open_generation(&self.conn).map_err(index_error)?;
        let head: u64 = log.query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |r| r.get(0)).map_err(read)?;
        let started = Instant::now();
        let mut reported = Instant::now();
        let mut stmt = log
            .prepare("SELECT seq, record, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(read)?;
        while self.mark < head {
            let mut refs = Vec::new();
            let mut last: Option<(u64, String)> = None;
            let mut rows = stmt.query(params![self.mark, CATCH_UP_STEP]).map_err(read)?;
            while let Some(row) = rows.next().map_err(read)? {
                let seq: u64 = row.get(0).map_err(read)?;
                let json: String = row.get(1).map_err(read)?;
                // A record that does not decode is the verifier's to report;
                // it names no subject the index could hold.
                if let Ok(record) = serde_json::from_str::<Record>(&json) {
                    refs.extend(subjects_of(&record).into_iter().map(|s| (s.to_string(), seq)));
                }
                last = Some((seq, row.get(2).map_err(read)?));
            }
            let Some((seq, hash)) = last else { break };
            self.write(&refs, seq, &hash).map_err(index_error)?;
            if reported.elapsed() > Duration::from_secs(5) {
                tracing::info!(done = seq, of = head, "rebuilding the audit subject index");
                reported = Instant::now();
            }
        }
        if started.elapsed() > Duration::from_secs(5) {
            tracing::info!(records = head, secs = started.elapsed().as_secs(), "the audit subject index caught up");
        }
        self.behind = false;
        Ok(())
    }
}
