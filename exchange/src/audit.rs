//! The tamper-evident audit log: every access and every administrative act,
//! hash-chained in its own SQLite file (`<data-dir>/audit.db`).
//!
//! Each record is stored as its canonical JSON ([`Record`]) in `audit_log`,
//! with `hash = hex(SHA-256(prev_hash || "\n" || record))` and the genesis
//! `prev_hash` 64 zeros. One writer thread appends in batches (group commit):
//! it drains what callers have queued, writes the records, their index rows
//! and one signed checkpoint of the new head in one transaction, and answers
//! the callers once the transaction is durable (one fsync per batch). The
//! checkpoints are HMACs under a key derived from the platform secret, so a
//! chain rewritten without the secret fails their signatures, and a cut tail
//! leaves a checkpoint past the last record. [`verify_file`] (and
//! [`AuditLog::verify`]) recompute all of it and name the first broken record.
//!
//! The index tables (`audit_index`, `audit_refs`, and the subject index in
//! a file of its own, [`subjects`]) are derived from the records for
//! filtering ([`AuditLog::list`], [`AuditLog::usage`]); they are not covered
//! by the hash, but the verifier checks that they agree with the records. [`AuditLog::table`] is the `gdx.audit` table auditors query with
//! SQL; it streams the log page by page.
//!
//! Writing fails closed: when a batch cannot be committed, every caller of
//! that batch gets [`AuditError::Unavailable`] (the HTTP layer answers 503)
//! and nothing of the batch remains.

mod error;
mod read;
mod schema;
mod subjects;
mod table;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, mpsc};

use chrono::{DateTime, SecondsFormat, Utc};
use gdx_policies::HashKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use error::AuditError;
pub use read::{Filter, Scope, Usage};
pub use table::AuditTable;
pub use verify::{VerifyReport, verify_file};

use crate::secret::PlatformSecret;

/// The `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Actions that read or receive a dataset's records, counted by [`AuditLog::usage`].
pub const READ_ACTIONS: [&str; 5] = ["query", "lookup", "batch_lookup", "verify", "push"];

/// One audit record. Its canonical encoding is its JSON in this field order,
/// with `None` and empty fields left out; the field names are part of the
/// stored format.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// Position in the log (1, 2, …), assigned by the log.
    pub seq: u64,
    /// When the record was appended, assigned by the log: never earlier than
    /// the previous record. RFC 3339 in UTC with microseconds.
    #[serde(with = "rfc3339_micros")]
    pub time: DateTime<Utc>,
    /// Who acted (principal name), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The department of the principal (the consumer, for reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    /// What was done: `query`, `lookup`, `verify`, `push`, `rule_eval`,
    /// `dataset.create`, `request.approve`, …
    pub action: String,
    /// HTTP method of the request, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Route template of the request, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// HTTP status answered, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `ok`, `denied`, `unauthenticated`, `invalid` or `failed`.
    pub outcome: String,
    /// Datasets concerned, as `{department}.{name}`; the provider department
    /// is the part before the first `.`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
    /// Versions of the datasets read.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, i64>,
    /// The SQL run, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Rows returned or pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// The declared purpose of the access.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Keyed hashes of the subject keys concerned ([`AuditLog::subject_hash`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Id of the object acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Further detail, such as a rejection reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Record {
    /// A record of `action` with `outcome`; the rest empty.
    pub fn new(action: impl Into<String>, outcome: impl Into<String>) -> Self {
        Self { action: action.into(), outcome: outcome.into(), ..Self::default() }
    }

    /// The canonical JSON of the record, as hashed and stored.
    pub fn canonical_json(&self) -> String {
        // Serialising a struct of strings, integers, string lists and a
        // string-keyed map into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The provider department of a dataset id: the part before the first `.`
/// (the whole id when it has none).
pub fn provider_of(dataset: &str) -> &str {
    dataset.split_once('.').map_or(dataset, |(department, _)| department)
}

/// `hex(SHA-256(prev_hash || "\n" || record_json))`.
pub fn chain_hash(prev_hash: &str, record_json: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(record_json.as_bytes());
    hex::encode(h.finalize())
}

/// A time as stored: RFC 3339, UTC, microseconds, `Z`.
pub(crate) fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

mod rfc3339_micros {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

/// Keys derived from the platform secret, one per use, none equal to the
/// key of the `hash` mask (which is the secret itself).
pub(crate) struct Keys {
    checkpoint: HashKey,
    subject: HashKey,
}

impl Keys {
    pub(crate) fn derive(secret: &PlatformSecret) -> Self {
        let root = HashKey::new(secret.key());
        let derive = |label: &[u8]| HashKey::new(root.hash(label).as_bytes());
        Self { checkpoint: derive(b"gdx-audit-checkpoint"), subject: derive(b"gdx-audit-subject") }
    }

    /// The signature of a checkpoint of record `seq` with `hash`, made at `signed_at`.
    pub(crate) fn sign_checkpoint(&self, seq: u64, hash: &str, signed_at: &str) -> String {
        self.checkpoint.hash(format!("gdx-audit-checkpoint/v1\n{seq}\n{hash}\n{signed_at}").as_bytes())
    }
}

/// A queued append: the record and, for [`AuditLog::append`], where to answer.
struct Job {
    record: Record,
    reply: Option<tokio::sync::oneshot::Sender<Result<u64, AuditError>>>,
    /// When it was queued (for `gdx_audit_wait_seconds`).
    queued: std::time::Instant,
}

/// The audit log of one `audit.db`: appends through its writer thread, reads
/// on read-only connections. Cheap to clone; the writer stops, after writing
/// what is queued, when the last clone is dropped or at [`AuditLog::close`].
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    sender: RwLock<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    indexer: Mutex<Option<std::thread::JoinHandle<()>>>,
    keys: Arc<Keys>,
    reader: Arc<read::Reader>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if absent) the audit log at `path` and starts its writer.
    #[tracing::instrument(skip_all, fields(path = %path.display()))]
    pub fn open(path: &Path, secret: &PlatformSecret) -> Result<AuditLog, AuditError> {
        let conn = schema::open_writer(path)?;
        let index = subjects::open_writer(path)?;
        let keys = Arc::new(Keys::derive(secret));
        let spawn_error = |e: std::io::Error| AuditError::Open { path: path.to_path_buf(), reason: e.to_string() };
        let (committed, handed_over) = mpsc::channel();
        let indexer = subjects::Indexer::new(index, path.to_path_buf());
        let indexer = std::thread::Builder::new()
            .name("gdx-audit-subjects".into())
            .spawn(move || indexer.run(handed_over))
            .map_err(spawn_error)?;
        let (sender, receiver) = mpsc::channel();
        let writer = writer::Writer::new(conn, path.to_path_buf(), keys.clone(), committed);
        let handle = std::thread::Builder::new()
            .name("gdx-audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(spawn_error)?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                sender: RwLock::new(Some(sender)),
                writer: Mutex::new(Some(handle)),
                indexer: Mutex::new(Some(indexer)),
                keys,
                reader: Arc::new(read::Reader::new(path.to_path_buf())),
            }),
        })
    }

    /// The file of the log.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues `job` for the writer; gives it back when the writer has stopped.
    fn send(&self, job: Job) -> Result<(), Box<Job>> {
        let guard = self.inner.sender.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(sender) => sender.send(job).map_err(|e| Box::new(e.0)),
            None => Err(Box::new(job)),
        }
    }

    fn stopped(&self) -> AuditError {
        AuditError::Unavailable { path: self.inner.path.clone(), reason: "the audit writer has stopped".into() }
    }

    /// Appends `record` (its `seq` and `time` are assigned here) and returns
    /// its seq once it is durable.
    pub async fn append(&self, record: Record) -> Result<u64, AuditError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.send(Job { record, reply: Some(reply), queued: std::time::Instant::now() }).is_err() {
            return Err(self.stopped());
        }
        answer.await.map_err(|_| self.stopped())?
    }

    /// Queues `record` without waiting for it to be durable; a failure to
    /// write it is logged.
    pub fn append_detached(&self, record: Record) {
        if let Err(job) = self.send(Job { record, reply: None, queued: std::time::Instant::now() }) {
            tracing::error!(
                path = %self.inner.path.display(),
                action = %job.record.action,
                "an audit record was lost: the audit writer has stopped"
            );
        }
    }

    /// The keyed hash under which a subject key (citizen ID, credit code) is
    /// recorded: the same key always gives the same hash.
    pub fn subject_hash(&self, key: &str) -> String {
        self.inner.keys.subject.hash(key.as_bytes())
    }

    /// Stops the writer after writing what is queued, and waits for it.
    /// Appends after this fail with [`AuditError::Unavailable`]. Blocks: call
    /// it at shutdown, not on a busy runtime thread.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Records matching `filter` that `scope` may see, oldest first, at most
    /// `limit`, after seq `after` (the cursor of the previous page).
    pub async fn list(
        &self,
        filter: &Filter,
        scope: &Scope,
        limit: usize,
        after: Option<u64>,
    ) -> Result<Vec<Record>, AuditError> {
        let (reader, filter, scope) = (self.inner.reader.clone(), filter.clone(), scope.clone());
        read::blocking(&self.inner.path, move || reader.list(&filter, &scope, limit, after)).await
    }

    /// Successful reads per dataset and consumer department, in `[from, to)`:
    /// records with outcome `ok` and an action of [`READ_ACTIONS`]. A scoped
    /// reader sees the rows of its own datasets and of its own consumption.
    pub async fn usage(
        &self,
        dataset: Option<&str>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        scope: &Scope,
    ) -> Result<Vec<Usage>, AuditError> {
        let (reader, scope, dataset) = (self.inner.reader.clone(), scope.clone(), dataset.map(str::to_string));
        read::blocking(&self.inner.path, move || reader.usage(dataset.as_deref(), from, to, &scope)).await
    }

    /// Recomputes the chain, the checkpoints and the index (see [`verify_file`]).
    /// A log that cannot be read is reported as not ok.
    pub async fn verify(&self, expect_head: Option<&str>) -> VerifyReport {
        let (path, keys, expect) = (self.inner.path.clone(), self.inner.keys.clone(), expect_head.map(str::to_string));
        let result =
            read::blocking(&self.inner.path, move || verify::verify_path(&path, &keys, expect.as_deref())).await;
        result.unwrap_or_else(|e| {
            tracing::error!(error = ?e, "the audit log could not be verified");
            VerifyReport::unreadable()
        })
    }

    /// The `gdx.audit` table as `scope` may see it, for auditors' SQL.
    pub fn table(&self, scope: Scope) -> Arc<dyn datafusion::catalog::TableProvider> {
        Arc::new(AuditTable::new(self.inner.reader.clone(), scope))
    }
}

impl Inner {
    fn close(&self) {
        // Dropping the sender ends the writer's loop once the queue is drained.
        drop(self.sender.write().unwrap_or_else(|e| e.into_inner()).take());
        // The writer's end of the indexer's queue goes with it: the indexer
        // then writes what it holds and stops.
        for (thread, name) in [(&self.writer, "writer"), (&self.indexer, "subject indexer")] {
            let handle = thread.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(handle) = handle
                && handle.join().is_err()
            {
                tracing::error!(path = %self.path.display(), "the audit {name} panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}
