//! The writer thread: group commit of queued appends.
//!
//! It blocks for the first queued record, takes everything else queued (up
//! to [`BATCH`]), and writes the batch, its index rows and one signed
//! checkpoint of the new head in one transaction: one fsync for the whole
//! batch. Only then are the callers answered. When the transaction fails it
//! is rolled back, every caller of the batch gets the error, and the head is
//! read again from the database before the next batch. The subjects of a
//! committed batch are handed to the subject indexer ([`super::subjects`]).
//! Each commit is measured in `/metrics` (`gdx_audit_commit_seconds`,
//! `gdx_audit_batch_records`, `gdx_audit_wait_seconds`), each failed one
//! counted (`gdx_audit_commit_failures_total`).

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::schema::{IndexRow, refs_of};
use super::subjects::Committed;
use super::{AuditError, GENESIS, Job, Keys, Record, chain_hash, format_time};

/// The most records committed in one transaction.
pub const BATCH: usize = 4096;

/// The last record of the chain.
#[derive(Clone, Debug)]
struct Head {
    seq: u64,
    hash: String,
    time: DateTime<Utc>,
}

pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    keys: Arc<Keys>,
    /// Where committed subjects go; `None` once the indexer has stopped.
    subjects: Option<mpsc::Sender<Committed>>,
}

/// The metrics of a committed batch: how long its commit took (from the
/// batch taken to durable), how many records it held, and how long its
/// first record, the oldest (the queue is first in, first out), waited from
/// queued to durable (what an audited request pays at most).
fn record_commit(taken: Instant, batch: &[Job]) {
    let now = Instant::now();
    metrics::histogram!("gdx_audit_commit_seconds").record(now.duration_since(taken));
    metrics::histogram!("gdx_audit_batch_records").record(batch.len() as f64);
    if let Some(oldest) = batch.first() {
        metrics::histogram!("gdx_audit_wait_seconds").record(now.duration_since(oldest.queued));
    }
}

impl Writer {
    pub(super) fn new(conn: Connection, path: PathBuf, keys: Arc<Keys>, subjects: mpsc::Sender<Committed>) -> Self {
        Self { conn, path, keys, subjects: Some(subjects) }
    }

    /// Hands the subjects of a committed batch to the indexer (the records
    /// are not needed any more once their callers are answered).
    fn hand_over(&mut self, head: &Head, batch: &mut [Job]) {
        let Some(sender) = &self.subjects else { return };
        let refs = batch
            .iter_mut()
            .filter(|job| !job.record.subjects.is_empty())
            .map(|job| (job.record.seq, std::mem::take(&mut job.record.subjects)))
            .collect();
        if sender.send(Committed { through: head.seq, hash: head.hash.clone(), refs }).is_err() {
            // Readers search the records after the index's mark, so nothing is missed.
            tracing::error!(path = %self.path.display(), "the audit subject indexer has stopped");
            self.subjects = None;
        }
    }

    /// Runs until every sender is gone and the queue is empty.
    pub(super) fn run(mut self, queue: mpsc::Receiver<Job>) {
        let mut head = self.read_head().map_err(|e| self.log_failure(&e, 0)).ok();
        let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
        while let Ok(first) = queue.recv() {
            batch.push(first);
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let taken = Instant::now();
            let result = match head.take() {
                Some(h) => Ok(h),
                None => self.read_head(),
            }
            .and_then(|h| self.commit(h, &mut batch));
            match result {
                Ok(new_head) => {
                    record_commit(taken, &batch);
                    self.hand_over(&new_head, &mut batch);
                    for job in batch.drain(..) {
                        if let Some(reply) = job.reply {
                            // A caller that stopped waiting still has its record written.
                            let _ = reply.send(Ok(job.record.seq));
                        }
                    }
                    head = Some(new_head);
                }
                Err(e) => {
                    metrics::counter!("gdx_audit_commit_failures_total").increment(1);
                    self.log_failure(&e, batch.len());
                    for job in batch.drain(..) {
                        let error = AuditError::Unavailable { path: self.path.clone(), reason: e.to_string() };
                        match job.reply {
                            Some(reply) => {
                                let _ = reply.send(Err(error));
                            }
                            None => tracing::error!(
                                path = %self.path.display(),
                                action = %job.record.action,
                                "an audit record was lost: the audit log cannot be written"
                            ),
                        }
                    }
                    // The transaction was rolled back: start again from what is on disk.
                    head = self.read_head().map_err(|e| self.log_failure(&e, 0)).ok();
                }
            }
        }
        tracing::debug!(path = %self.path.display(), "the audit writer stopped");
    }

    fn log_failure(&self, error: &rusqlite::Error, records: usize) {
        tracing::error!(path = %self.path.display(), %error, records, "the audit log cannot be written");
    }

    /// The last record on disk (the genesis when there is none).
    fn read_head(&self) -> rusqlite::Result<Head> {
        let last: Option<(u64, String, String)> = self
            .conn
            .query_row("SELECT seq, hash, record FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(match last {
            None => Head { seq: 0, hash: GENESIS.to_string(), time: DateTime::<Utc>::MIN_UTC },
            Some((seq, hash, record)) => {
                // Only the time comes from the record; a record that does not
                // decode (the verifier reports it) must not stop the log.
                let time = serde_json::from_str::<Record>(&record).map(|r| r.time).unwrap_or_else(|e| {
                    tracing::warn!(path = %self.path.display(), seq, error = %e, "the last audit record does not decode");
                    DateTime::<Utc>::MIN_UTC
                });
                Head { seq, hash, time }
            }
        })
    }

    /// Writes `batch` after `head` in one transaction; assigns seq and time.
    fn commit(&mut self, head: Head, batch: &mut [Job]) -> rusqlite::Result<Head> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = Utc::now().trunc_subsecs(6);
        let time = now.max(head.time);
        let (mut seq, mut hash) = (head.seq, head.hash);
        {
            let mut log =
                tx.prepare_cached("INSERT INTO audit_log (seq, record, prev_hash, hash) VALUES (?1, ?2, ?3, ?4)")?;
            let mut index = tx.prepare_cached(
                "INSERT INTO audit_index (seq, at, principal, department, action, outcome, rows) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut refs = tx.prepare_cached("INSERT INTO audit_refs (kind, value, seq) VALUES (?1, ?2, ?3)")?;
            for job in batch.iter_mut() {
                seq += 1;
                job.record.seq = seq;
                job.record.time = time;
                let json = job.record.canonical_json();
                let next = chain_hash(&hash, &json);
                log.execute(params![seq, json, hash, next])?;
                hash = next;
                let row = IndexRow::of(&job.record);
                index.execute(params![
                    seq,
                    row.at,
                    row.principal,
                    row.department,
                    row.action,
                    row.outcome,
                    row.rows
                ])?;
                for (kind, value) in refs_of(&job.record) {
                    refs.execute(params![kind, value, seq])?;
                }
            }
            let signed_at = format_time(&Utc::now());
            let signature = self.keys.sign_checkpoint(seq, &hash, &signed_at);
            tx.prepare_cached(
                "INSERT INTO audit_checkpoints (seq, hash, signed_at, signature) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![seq, hash, signed_at, signature])?;
        }
        tx.commit()?;
        Ok(Head { seq, hash, time })
    }
}
