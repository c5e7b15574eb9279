//! The verifier: recomputes the chain, checks the signed checkpoints and the
//! derived index, and names the first broken record.
//!
//! It streams the four tables in seq order side by side (a merge), in one
//! read transaction so that appends running meanwhile are not seen halfway,
//! and stops at the first problem.

use std::collections::BTreeSet;
use std::iter::Peekable;
use std::path::Path;

use rusqlite::{Connection, Row, Rows};
use serde::{Deserialize, Serialize};

use super::schema::{self, IndexRow, refs_of};
use super::{AuditError, GENESIS, Keys, Record, chain_hash, subjects};
use crate::secret::PlatformSecret;

/// The verifier's findings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Whether the whole log holds.
    pub ok: bool,
    /// Records in the log.
    pub records: u64,
    /// The hash of the last record (when not ok, as stored: not to be trusted).
    pub head: Option<String>,
    /// The first record that is missing, altered, out of place or not covered
    /// by a valid signature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_broken: Option<u64>,
    /// What is wrong, in a sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Checkpoints found valid.
    pub checkpoints: u64,
    /// The record the last valid checkpoint signs.
    pub last_checkpoint: Option<u64>,
}

impl VerifyReport {
    /// The report of a log that could not be read at all.
    pub(super) fn unreadable() -> Self {
        Self {
            ok: false,
            records: 0,
            head: None,
            first_broken: None,
            problem: Some("the audit log cannot be read".into()),
            checkpoints: 0,
            last_checkpoint: None,
        }
    }
}

/// Verifies the audit log at `path` offline: opens it read-only (a missing
/// file is an error; nothing is created) and checks, in seq order, that
///
/// - the records are numbered 1, 2, … without gaps, and each carries its own
///   seq in its JSON;
/// - each links to the previous hash and its hash is that of its content;
/// - each checkpoint is signed with the key derived from `secret` and signs
///   the hash the chain has at its seq, that the last record is signed by a
///   checkpoint, and that no checkpoint lies beyond the last record;
/// - the index rows agree with the records (those of the subject index up
///   to its mark, when the index is there);
/// - when `expect_head` is given (a head hash kept elsewhere), some record
///   has that hash.
#[tracing::instrument(skip_all, fields(path = %path.display()))]
pub fn verify_file(
    path: &Path,
    secret: &PlatformSecret,
    expect_head: Option<&str>,
) -> Result<VerifyReport, AuditError> {
    verify_path(path, &Keys::derive(secret), expect_head)
}

pub(super) fn verify_path(path: &Path, keys: &Keys, expect_head: Option<&str>) -> Result<VerifyReport, AuditError> {
    let conn = schema::open_reader(path)?;
    let read = |e: rusqlite::Error| AuditError::Read { path: path.to_path_buf(), reason: e.to_string() };
    let tx = conn.unchecked_transaction().map_err(read)?;
    let report = verify_conn(&tx, keys, expect_head).map_err(read)?;
    drop(tx);
    Ok(report)
}

/// A finding that stops the verification.
struct Broken {
    seq: u64,
    problem: String,
}

fn broken(seq: u64, problem: impl Into<String>) -> Broken {
    Broken { seq, problem: problem.into() }
}

type Step<T> = rusqlite::Result<Result<T, Broken>>;

fn next<T>(rows: &mut Peekable<impl Iterator<Item = rusqlite::Result<T>>>) -> rusqlite::Result<Option<T>> {
    rows.next().transpose()
}

/// Makes `Rows` an iterator of decoded rows.
fn decoded<'s, T>(
    rows: Rows<'s>,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T> + 's,
) -> Peekable<impl Iterator<Item = rusqlite::Result<T>> + 's> {
    rows.mapped(f).peekable()
}

fn peek_seq<T>(rows: &mut Peekable<impl Iterator<Item = rusqlite::Result<(i64, T)>>>) -> rusqlite::Result<Option<i64>> {
    match rows.peek() {
        None => Ok(None),
        Some(Ok((seq, _))) => Ok(Some(*seq)),
        Some(Err(_)) => match rows.next() {
            Some(Err(e)) => Err(e),
            _ => Ok(None),
        },
    }
}

struct Checkpoint {
    hash: String,
    signed_at: String,
    signature: String,
}

fn verify_conn(conn: &Connection, keys: &Keys, expect_head: Option<&str>) -> rusqlite::Result<VerifyReport> {
    // The subject index's mark is read first, so that the log read after it
    // holds every record the mark covers.
    let subject_mark = if subjects::attached(conn) { subjects::mark(conn)? } else { 0 };
    let mut log_stmt = conn.prepare("SELECT seq, record, prev_hash, hash FROM audit_log ORDER BY seq")?;
    let mut index_stmt =
        conn.prepare("SELECT seq, at, principal, department, action, outcome, rows FROM audit_index ORDER BY seq")?;
    let mut refs_stmt = conn.prepare(&if subject_mark > 0 {
        format!(
            "SELECT seq, kind, value FROM audit_refs UNION ALL \
             SELECT seq, 'subject', CAST(key AS TEXT) FROM {}.subject_refs WHERE seq <= {subject_mark} \
             ORDER BY 1, 2, 3",
            subjects::SCHEMA_NAME
        )
    } else {
        "SELECT seq, kind, value FROM audit_refs ORDER BY seq, kind, value".to_string()
    })?;
    let mut cp_stmt = conn.prepare("SELECT seq, hash, signed_at, signature FROM audit_checkpoints ORDER BY seq")?;
    let mut log = decoded(log_stmt.query([])?, |r| {
        Ok((r.get::<_, i64>(0)?, (r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?)))
    });
    let mut index = decoded(index_stmt.query([])?, |r| {
        Ok((
            r.get::<_, i64>(0)?,
            IndexRow {
                at: r.get(1)?,
                principal: r.get(2)?,
                department: r.get(3)?,
                action: r.get(4)?,
                outcome: r.get(5)?,
                rows: r.get(6)?,
            },
        ))
    });
    let mut refs = decoded(refs_stmt.query([])?, |r| Ok((r.get::<_, i64>(0)?, (r.get::<_, String>(1)?, r.get(2)?))));
    let mut cps = decoded(cp_stmt.query([])?, |r| {
        Ok((r.get::<_, i64>(0)?, Checkpoint { hash: r.get(1)?, signed_at: r.get(2)?, signature: r.get(3)? }))
    });

    let expect_head = expect_head.map(|h| h.trim().to_ascii_lowercase());
    let mut state = State {
        records: 0,
        prev: GENESIS.to_string(),
        last_time: None,
        checkpoints: 0,
        last_checkpoint: 0,
        expect_found: false,
    };
    let outcome: Result<(), Broken> = (|| -> Step<()> {
        while let Some((seq, (json, prev_hash, hash))) = next(&mut log)? {
            let expected = state.records + 1;
            if seq != expected as i64 {
                return Ok(Err(if seq > expected as i64 {
                    broken(expected, format!("record {expected} is missing"))
                } else {
                    broken(expected, format!("a record has the invalid seq {seq}"))
                }));
            }
            let seq = expected;
            let record = match state.check_record(seq, &json, &prev_hash, &hash) {
                Ok(r) => r,
                Err(b) => return Ok(Err(b)),
            };
            if let Err(b) = check_index(seq, &record, seq <= subject_mark, &mut index, &mut refs)? {
                return Ok(Err(b));
            }
            if expect_head.as_deref() == Some(hash.as_str()) {
                state.expect_found = true;
            }
            // The checkpoints up to this record.
            while let Some(cp_seq) = peek_seq(&mut cps)? {
                if cp_seq > seq as i64 {
                    break;
                }
                let Some((cp_seq, cp)) = next(&mut cps)? else { break };
                let from = state.last_checkpoint + 1;
                if cp_seq < seq as i64 {
                    return Ok(Err(broken(
                        from,
                        format!("a checkpoint names the record {cp_seq}, which is not in the log"),
                    )));
                }
                if keys.sign_checkpoint(seq, &cp.hash, &cp.signed_at) != cp.signature {
                    return Ok(Err(broken(
                        from,
                        format!(
                            "the checkpoint of record {seq} is not signed with this platform's secret: \
                             records {from} to {seq} were rewritten, or the secret is not the one that wrote them"
                        ),
                    )));
                }
                if cp.hash != hash {
                    return Ok(Err(broken(
                        from,
                        format!(
                            "the signed checkpoint of record {seq} does not match the chain: \
                             records {from} to {seq} were rewritten"
                        ),
                    )));
                }
                state.checkpoints += 1;
                state.last_checkpoint = seq;
            }
            state.prev = hash;
        }
        let last = state.records;
        if let Some((cp_seq, cp)) = next(&mut cps)? {
            let signed = cp_seq > 0 && keys.sign_checkpoint(cp_seq as u64, &cp.hash, &cp.signed_at) == cp.signature;
            return Ok(Err(broken(
                last + 1,
                if signed {
                    format!(
                        "a checkpoint signs record {cp_seq} but the log ends at record {last}: \
                         records were removed from its end"
                    )
                } else {
                    format!(
                        "a checkpoint names the record {cp_seq}, which is not in the log, and is not validly signed"
                    )
                },
            )));
        }
        if state.last_checkpoint != last {
            let from = state.last_checkpoint + 1;
            return Ok(Err(broken(
                from,
                format!(
                    "records {from} to {last} are not covered by a signed checkpoint: they were added or rewritten"
                ),
            )));
        }
        if let Some((seq, _)) = next(&mut index)? {
            return Ok(Err(broken(
                seq.max(0) as u64,
                format!("an index row names the record {seq}, which is not in the log"),
            )));
        }
        if let Some((seq, _)) = next(&mut refs)? {
            return Ok(Err(broken(
                seq.max(0) as u64,
                format!("an index row names the record {seq}, which is not in the log"),
            )));
        }
        if let Some(h) = &expect_head
            && !state.expect_found
        {
            return Ok(Err(broken(
                last + 1,
                format!("no record has the expected head hash {h}: the log was cut or rewritten"),
            )));
        }
        Ok(Ok(()))
    })()?;

    let (first_broken, problem) = match outcome {
        Ok(()) => (None, None),
        Err(b) => (Some(b.seq), Some(b.problem)),
    };
    let (records, head) = if first_broken.is_none() {
        (state.records, (state.records > 0).then(|| state.prev.clone()))
    } else {
        let count: u64 = conn.query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0))?;
        let head: Option<String> = conn
            .query_row("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| r.get(0))
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
        (count, head)
    };
    Ok(VerifyReport {
        ok: first_broken.is_none(),
        records,
        head,
        first_broken,
        problem,
        checkpoints: state.checkpoints,
        last_checkpoint: (state.last_checkpoint > 0).then_some(state.last_checkpoint),
    })
}

struct State {
    records: u64,
    prev: String,
    last_time: Option<chrono::DateTime<chrono::Utc>>,
    checkpoints: u64,
    last_checkpoint: u64,
    expect_found: bool,
}

impl State {
    /// Checks the link, the hash and the content of record `seq`.
    fn check_record(&mut self, seq: u64, json: &str, prev_hash: &str, hash: &str) -> Result<Record, Broken> {
        if prev_hash != self.prev {
            return Err(broken(seq, format!("record {seq} does not link to the record before it")));
        }
        if chain_hash(prev_hash, json) != hash {
            return Err(broken(seq, format!("record {seq} was altered: its hash does not match its content")));
        }
        let record: Record = serde_json::from_str(json)
            .map_err(|e| broken(seq, format!("record {seq} is not a valid audit record: {e}")))?;
        if record.seq != seq {
            return Err(broken(
                seq,
                format!("the record at position {seq} carries seq {}: records were moved", record.seq),
            ));
        }
        if self.last_time.is_some_and(|t| record.time < t) {
            return Err(broken(seq, format!("record {seq} is dated before the record before it")));
        }
        self.last_time = Some(record.time);
        self.records = seq;
        Ok(record)
    }
}

/// Checks that the index rows of record `seq` are those its content gives
/// (with its subjects when `with_subjects`).
fn check_index(
    seq: u64,
    record: &Record,
    with_subjects: bool,
    index: &mut Peekable<impl Iterator<Item = rusqlite::Result<(i64, IndexRow)>>>,
    refs: &mut Peekable<impl Iterator<Item = rusqlite::Result<(i64, (String, String))>>>,
) -> Step<()> {
    let mismatch = || broken(seq, format!("the index row of record {seq} disagrees with the record"));
    match peek_seq(index)? {
        Some(s) if s == seq as i64 => {
            let Some((_, row)) = next(index)? else { return Ok(Err(mismatch())) };
            if row != IndexRow::of(record) {
                return Ok(Err(mismatch()));
            }
        }
        Some(s) if s < seq as i64 => {
            return Ok(Err(broken(seq, format!("an index row names the record {s}, which is not in the log"))));
        }
        _ => return Ok(Err(broken(seq, format!("record {seq} has no index row")))),
    }
    let mut found: BTreeSet<(String, String)> = BTreeSet::new();
    while let Some(s) = peek_seq(refs)? {
        if s > seq as i64 {
            break;
        }
        let Some((s, kv)) = next(refs)? else { break };
        if s < seq as i64 {
            return Ok(Err(broken(seq, format!("an index row names the record {s}, which is not in the log"))));
        }
        found.insert(kv);
    }
    let mut wanted: BTreeSet<(String, String)> = refs_of(record).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    if with_subjects {
        wanted.extend(
            subjects::subjects_of(record).into_iter().map(|s| ("subject".to_string(), subjects::key_of(s).to_string())),
        );
    }
    if found != wanted {
        return Ok(Err(mismatch()));
    }
    Ok(Ok(()))
}
