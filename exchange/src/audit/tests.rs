//! Tests of the audit log on real SQLite files.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, UInt64Type};
use chrono::{TimeZone, Utc};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use rusqlite::{Connection, params};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    secret: PlatformSecret,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let secret = crate::secret::load_or_create(&dir.path().join("secret.key"), &data).unwrap();
    let path = data.join("audit.db");
    Fixture { _dir: dir, secret, path }
}

fn record(action: &str, principal: &str, department: &str, datasets: &[&str]) -> Record {
    Record {
        principal: Some(principal.into()),
        department: Some(department.into()),
        datasets: datasets.iter().map(|d| d.to_string()).collect(),
        ..Record::new(action, "ok")
    }
}

/// Appends `n` records one by one (one batch, one checkpoint each).
async fn append_n(log: &AuditLog, n: u64) {
    for i in 0..n {
        let mut r = record("query", "alice", "minzheng", &["gongan.population"]);
        r.rows = Some(i);
        log.append(r).await.unwrap();
    }
}

fn rw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

fn verify(f: &Fixture, expect: Option<&str>) -> VerifyReport {
    verify_file(&f.path, &f.secret, expect).unwrap()
}

fn assert_broken(report: &VerifyReport, seq: u64, words: &str) {
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_broken, Some(seq), "{report:?}");
    let problem = report.problem.as_deref().unwrap();
    assert!(problem.contains(words), "{problem:?} should say {words:?}");
}

/// Rewrites records `from..` with `edit` and recomputes their hashes, as an
/// attacker without the secret would; the checkpoints are left alone.
fn rewrite_chain(path: &Path, from: u64, edit: impl Fn(u64, &mut serde_json::Value)) {
    let conn = rw(path);
    let rows: Vec<(u64, String)> = conn
        .prepare("SELECT seq, record FROM audit_log WHERE seq >= ?1 ORDER BY seq")
        .unwrap()
        .query_map([from], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut prev: String = conn
        .query_row(
            "SELECT coalesce((SELECT hash FROM audit_log WHERE seq = ?1), ?2)",
            params![from - 1, GENESIS],
            |r| r.get(0),
        )
        .unwrap();
    for (seq, json) in rows {
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        edit(seq, &mut value);
        let json = value.to_string();
        let hash = chain_hash(&prev, &json);
        conn.execute(
            "UPDATE audit_log SET record = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
            params![json, prev, hash, seq],
        )
        .unwrap();
        prev = hash;
    }
}

fn head_hash(path: &Path) -> String {
    rw(path).query_row("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap()
}

#[test]
fn canonical_json_and_chain() {
    let mut r = Record::new("query", "ok");
    r.seq = 7;
    r.time = Utc.with_ymd_and_hms(2026, 3, 1, 8, 0, 0).unwrap() + chrono::Duration::microseconds(12);
    r.principal = Some("alice".into());
    r.datasets = vec!["gongan.population".into()];
    r.versions.insert("gongan.population".into(), 3);
    r.rows = Some(10);
    assert_eq!(
        r.canonical_json(),
        r#"{"seq":7,"time":"2026-03-01T08:00:00.000012Z","principal":"alice","action":"query","outcome":"ok","datasets":["gongan.population"],"versions":{"gongan.population":3},"rows":10}"#
    );
    let back: Record = serde_json::from_str(&r.canonical_json()).unwrap();
    assert_eq!(back, r);
    assert_eq!(provider_of("gongan.population"), "gongan");
    assert_eq!(provider_of("nodot"), "nodot");
    let mut h = Sha256::new();
    h.update(format!("{GENESIS}\n{}", r.canonical_json()));
    assert_eq!(chain_hash(GENESIS, &r.canonical_json()), hex::encode(h.finalize()));
}

#[tokio::test]
async fn stored_rows_are_the_chain() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    assert_eq!(log.append(record("query", "alice", "minzheng", &[])).await.unwrap(), 1);
    assert_eq!(log.append(record("lookup", "bob", "minzheng", &[])).await.unwrap(), 2);
    log.close();
    assert!(log.append(Record::new("query", "ok")).await.unwrap_err().is_unavailable());
    let conn = rw(&f.path);
    let rows: Vec<(u64, String, String, String)> = conn
        .prepare("SELECT seq, record, prev_hash, hash FROM audit_log ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows[0].2, GENESIS);
    assert_eq!(rows[0].3, chain_hash(GENESIS, &rows[0].1));
    assert_eq!(rows[1].2, rows[0].3);
    let first: Record = serde_json::from_str(&rows[0].1).unwrap();
    let second: Record = serde_json::from_str(&rows[1].1).unwrap();
    assert_eq!((first.seq, second.seq), (1, 2));
    assert!(second.time >= first.time);
    assert_eq!(first.canonical_json(), rows[0].1);
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, schema::VERSION);
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_contiguous() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let mut r = record("query", &format!("p{t}"), "minzheng", &["gongan.population"]);
                r.rows = Some(i);
                seqs.push(log.append(r).await.unwrap());
            }
            seqs
        }));
    }
    // Verifying while appends run sees a consistent snapshot.
    for _ in 0..5 {
        let report = log.verify(None).await;
        assert!(report.ok, "{report:?}");
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<u64>>());
    let report = log.verify(None).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 1000);
    assert_eq!(report.last_checkpoint, Some(1000));
    assert!(report.checkpoints >= 1 && report.checkpoints <= 1000);
    assert_eq!(report.head.as_deref(), Some(head_hash(&f.path).as_str()));
}

#[tokio::test]
async fn reopened_log_continues_the_chain() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 5).await;
    let before = log.list(&Filter::default(), &Scope::All, 10, None).await.unwrap();
    drop(log);
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    assert_eq!(log.append(Record::new("dataset.create", "ok")).await.unwrap(), 6);
    let all = log.list(&Filter::default(), &Scope::All, 10, None).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(&all[..5], &before[..]);
    assert!(all.windows(2).all(|w| w[0].time <= w[1].time));
    let report = log.verify(None).await;
    assert!(report.ok && report.records == 6, "{report:?}");
}

#[tokio::test]
async fn detached_appends_are_flushed_at_close() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    for _ in 0..500 {
        log.append_detached(Record::new("rule_eval", "ok"));
    }
    let clone = log.clone();
    drop(log);
    clone.close();
    let report = verify(&f, None);
    assert!(report.ok && report.records == 500, "{report:?}");
}

#[tokio::test]
async fn verify_names_an_edited_record() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 10).await;
    log.close();
    assert!(verify(&f, None).ok);
    rw(&f.path)
        .execute("UPDATE audit_log SET record = replace(record, '\"outcome\":\"ok\"', '\"outcome\":\"denied\"') WHERE seq = 5", [])
        .unwrap();
    assert_broken(&verify(&f, None), 5, "altered");
}

#[tokio::test]
async fn verify_names_a_deleted_record() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 10).await;
    log.close();
    let conn = rw(&f.path);
    for table in ["audit_log", "audit_index", "audit_refs"] {
        conn.execute(&format!("DELETE FROM {table} WHERE seq = 7"), []).unwrap();
    }
    assert_broken(&verify(&f, None), 7, "missing");
}

#[tokio::test]
async fn verify_names_swapped_records() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 10).await;
    log.close();
    let conn = rw(&f.path);
    conn.execute_batch(
        "UPDATE audit_log SET seq = -4 WHERE seq = 4;
         UPDATE audit_log SET seq = 4 WHERE seq = 3;
         UPDATE audit_log SET seq = 3 WHERE seq = -4;",
    )
    .unwrap();
    assert_broken(&verify(&f, None), 3, "does not link");
    // With the hashes recomputed over the new order, the seq inside gives it away.
    rewrite_chain(&f.path, 3, |_, _| {});
    assert_broken(&verify(&f, None), 3, "carries seq 4");
}

#[tokio::test]
async fn verify_names_a_record_whose_seq_was_changed() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 6).await;
    log.close();
    rewrite_chain(&f.path, 4, |seq, v| {
        if seq == 4 {
            v["seq"] = serde_json::json!(40);
        }
    });
    assert_broken(&verify(&f, None), 4, "carries seq 40");
}

#[tokio::test]
async fn verify_detects_a_rewritten_chain() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 10).await;
    log.close();
    // The attacker edits record 6 and recomputes every hash after it.
    rewrite_chain(&f.path, 6, |seq, v| {
        if seq == 6 {
            v["principal"] = serde_json::json!("mallory");
        }
    });
    let conn = rw(&f.path);
    // The index is made to agree, so only the checkpoints can tell.
    conn.execute("UPDATE audit_index SET principal = 'mallory' WHERE seq = 6", []).unwrap();
    let report = verify(&f, None);
    assert_broken(&report, 6, "does not match the chain");
    assert_eq!(report.last_checkpoint, Some(5));
    // Copying the new hashes into the checkpoints breaks their signatures.
    conn.execute(
        "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit_log l WHERE l.seq = audit_checkpoints.seq)",
        [],
    )
    .unwrap();
    assert_broken(&verify(&f, None), 6, "not signed");
    // Re-signing with another secret does not help.
    let other = fixture();
    let keys = Keys::derive(&other.secret);
    let cps: Vec<(u64, String, String)> = conn
        .prepare("SELECT seq, hash, signed_at FROM audit_checkpoints")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (seq, hash, at) in cps.iter().filter(|c| c.0 >= 6) {
        conn.execute(
            "UPDATE audit_checkpoints SET signature = ?1 WHERE seq = ?2",
            params![keys.sign_checkpoint(*seq, hash, at), seq],
        )
        .unwrap();
    }
    assert_broken(&verify(&f, None), 6, "not signed");
    // Deleting the checkpoints leaves the rewritten records unsigned.
    conn.execute("DELETE FROM audit_checkpoints WHERE seq >= 6", []).unwrap();
    assert_broken(&verify(&f, None), 6, "not covered by a signed checkpoint");
    // And the log verifies under the secret that wrote it only.
    assert!(!verify_file(&f.path, &other.secret, None).unwrap().ok);
}

#[tokio::test]
async fn verify_detects_a_cut_tail_and_a_forged_append() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 10).await;
    log.close();
    let old_head = head_hash(&f.path);
    let conn = rw(&f.path);
    for table in ["audit_log", "audit_index", "audit_refs"] {
        conn.execute(&format!("DELETE FROM {table} WHERE seq > 8"), []).unwrap();
    }
    assert_broken(&verify(&f, None), 9, "removed from its end");
    conn.execute("UPDATE audit_checkpoints SET signature = 'x' WHERE seq = 9", []).unwrap();
    assert_broken(&verify(&f, None), 9, "not validly signed");
    // Without its checkpoints the cut is invisible, unless the old head is known.
    conn.execute("DELETE FROM audit_checkpoints WHERE seq > 8", []).unwrap();
    assert!(verify(&f, None).ok);
    assert_broken(&verify(&f, Some(&old_head)), 9, "expected head");
    // A record appended by hand, with a correct hash, has no signature.
    let mut r = record("query", "mallory", "x", &[]);
    r.seq = 9;
    r.time = Utc::now();
    let prev = head_hash(&f.path);
    let json = r.canonical_json();
    conn.execute(
        "INSERT INTO audit_log (seq, record, prev_hash, hash) VALUES (9, ?1, ?2, ?3)",
        params![json, prev, chain_hash(&prev, &json)],
    )
    .unwrap();
    let row = schema::IndexRow::of(&r);
    conn.execute(
        "INSERT INTO audit_index VALUES (9, ?1, ?2, ?3, ?4, ?5, ?6)",
        params![row.at, row.principal, row.department, row.action, row.outcome, row.rows],
    )
    .unwrap();
    assert_broken(&verify(&f, None), 9, "not covered by a signed checkpoint");
}

#[tokio::test]
async fn verify_with_an_expected_head() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 4).await;
    let middle: String = rw(&f.path).query_row("SELECT hash FROM audit_log WHERE seq = 2", [], |r| r.get(0)).unwrap();
    let report = log.verify(Some(&middle)).await;
    assert!(report.ok, "{report:?}");
    let report = log.verify(Some(&head_hash(&f.path).to_uppercase())).await;
    assert!(report.ok, "{report:?}");
    let report = log.verify(Some(&"ab".repeat(32))).await;
    assert_broken(&report, 5, "expected head");
    assert_eq!(report.records, 4);
}

#[tokio::test]
async fn verify_checks_the_index() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 6).await;
    log.close();
    let conn = rw(&f.path);
    conn.execute("UPDATE audit_index SET principal = 'mallory' WHERE seq = 3", []).unwrap();
    assert_broken(&verify(&f, None), 3, "index row of record 3 disagrees");
    conn.execute("UPDATE audit_index SET principal = 'alice' WHERE seq = 3", []).unwrap();
    assert!(verify(&f, None).ok);
    conn.execute("DELETE FROM audit_refs WHERE seq = 4 AND kind = 'provider'", []).unwrap();
    assert_broken(&verify(&f, None), 4, "index row of record 4 disagrees");
    conn.execute("INSERT INTO audit_refs VALUES ('provider', 'gongan', 4)", []).unwrap();
    conn.execute("INSERT INTO audit_refs VALUES ('dataset', 'other.table', 2)", []).unwrap();
    assert_broken(&verify(&f, None), 2, "index row of record 2 disagrees");
    conn.execute("DELETE FROM audit_refs WHERE seq = 2 AND value = 'other.table'", []).unwrap();
    conn.execute("CREATE TABLE saved AS SELECT * FROM audit_index WHERE seq = 5", []).unwrap();
    conn.execute("DELETE FROM audit_index WHERE seq = 5", []).unwrap();
    assert_broken(&verify(&f, None), 5, "no index row");
    conn.execute("INSERT INTO audit_index SELECT * FROM saved", []).unwrap();
    assert!(verify(&f, None).ok);
    conn.execute("INSERT INTO audit_index VALUES (99, 'x', NULL, NULL, 'query', 'ok', NULL)", []).unwrap();
    assert_broken(&verify(&f, None), 99, "not in the log");
}

#[tokio::test]
async fn verify_file_never_creates_a_log() {
    let f = fixture();
    let err = verify_file(&f.path, &f.secret, None).unwrap_err();
    assert!(matches!(err, AuditError::NotFound { .. }));
    assert!(!f.path.exists());
    assert!(!err.to_string().contains("audit.db"));
    // An empty log verifies.
    AuditLog::open(&f.path, &f.secret).unwrap().close();
    let report = verify(&f, None);
    assert!(report.ok && report.records == 0 && report.head.is_none(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_closed_while_the_database_is_locked() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 3).await;
    let locker = rw(&f.path);
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(20), log.append(Record::new("query", "ok")))
        .await
        .expect("append answers while the lock is held")
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!(err.to_string(), "the audit log cannot be written");
    assert_eq!(err.path(), f.path.as_path());
    // Reads still work while writes are locked out.
    assert_eq!(log.list(&Filter::default(), &Scope::All, 10, None).await.unwrap().len(), 3);
    locker.execute_batch("ROLLBACK").unwrap();
    assert_eq!(log.append(Record::new("query", "ok")).await.unwrap(), 4);
    let report = log.verify(None).await;
    assert!(report.ok && report.records == 4, "{report:?}");
}

#[tokio::test]
async fn a_failed_batch_leaves_nothing_and_the_next_one_succeeds() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    append_n(&log, 3).await;
    // A stray index row makes the next insert fail halfway through the batch.
    let conn = rw(&f.path);
    conn.execute("INSERT INTO audit_index VALUES (4, 'x', NULL, NULL, 'query', 'ok', NULL)", []).unwrap();
    assert!(log.append(Record::new("query", "ok")).await.unwrap_err().is_unavailable());
    assert!(log.append(Record::new("query", "ok")).await.unwrap_err().is_unavailable());
    let rows: u64 = conn.query_row("SELECT count(*) FROM audit_log", [], |r| r.get(0)).unwrap();
    let cps: u64 = conn.query_row("SELECT max(seq) FROM audit_checkpoints", [], |r| r.get(0)).unwrap();
    assert_eq!((rows, cps), (3, 3));
    conn.execute("DELETE FROM audit_index WHERE seq = 4", []).unwrap();
    assert_eq!(log.append(Record::new("query", "ok")).await.unwrap(), 4);
    let report = log.verify(None).await;
    assert!(report.ok && report.records == 4, "{report:?}");
}

fn departments(names: &[&str]) -> Scope {
    Scope::Departments(names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>())
}

/// A small log: who read what.
async fn sample(log: &AuditLog) {
    let alice_subject = log.subject_hash("110101199001011234");
    let mut rs = vec![
        record("query", "alice", "minzheng", &["gongan.population"]),
        record("lookup", "bob", "minzheng", &["gongan.population", "shebao.pensions"]),
        record("query", "carol", "shebao", &["shebao.pensions"]),
        record("dataset.create", "dave", "gongan", &[]),
        record("query", "alice", "minzheng", &["shebao.pensions"]),
        record("push", "svc", "jiaoyu", &["gongan.population"]),
    ];
    rs[0].rows = Some(10);
    rs[1].rows = Some(1);
    rs[1].subjects = vec![alice_subject];
    rs[4].outcome = "denied".into();
    rs[5].rows = Some(3);
    for r in rs {
        log.append(r).await.unwrap();
    }
}

fn seqs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

#[tokio::test]
async fn list_filters_pages_and_scopes() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    sample(&log).await;
    let all = Scope::All;
    let list = |filter: Filter, scope: Scope| {
        let log = log.clone();
        async move { seqs(&log.list(&filter, &scope, 100, None).await.unwrap()) }
    };
    assert_eq!(list(Filter::default(), all.clone()).await, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(list(Filter { principal: Some("alice".into()), ..Filter::default() }, all.clone()).await, vec![1, 5]);
    assert_eq!(
        list(Filter { department: Some("minzheng".into()), ..Filter::default() }, all.clone()).await,
        vec![1, 2, 5]
    );
    assert_eq!(list(Filter { action: Some("query".into()), ..Filter::default() }, all.clone()).await, vec![1, 3, 5]);
    assert_eq!(
        list(Filter { dataset: Some("shebao.pensions".into()), ..Filter::default() }, all.clone()).await,
        vec![2, 3, 5]
    );
    let subject = Some(log.subject_hash("110101199001011234"));
    assert_eq!(list(Filter { subject: subject.clone(), ..Filter::default() }, all.clone()).await, vec![2]);
    assert_eq!(
        list(Filter { subject, dataset: Some("gongan.population".into()), ..Filter::default() }, all.clone()).await,
        vec![2]
    );
    assert_eq!(
        list(
            Filter { dataset: Some("shebao.pensions".into()), principal: Some("alice".into()), ..Filter::default() },
            all.clone()
        )
        .await,
        vec![5]
    );
    // Time: [from, to).
    let records = log.list(&Filter::default(), &all, 100, None).await.unwrap();
    let t3 = records[2].time;
    let from_t3 = list(Filter { from: Some(t3), ..Filter::default() }, all.clone()).await;
    assert!(from_t3.contains(&3) && from_t3.contains(&6));
    assert!(!list(Filter { to: Some(t3), ..Filter::default() }, all.clone()).await.contains(&3));
    assert_eq!(list(Filter { to: Some(records[0].time), ..Filter::default() }, all.clone()).await, Vec::<u64>::new());
    let window = Filter { from: Some(records[1].time), to: Some(records[4].time), ..Filter::default() };
    let inside = list(window, all.clone()).await;
    let want: Vec<u64> =
        records.iter().filter(|r| r.time >= records[1].time && r.time < records[4].time).map(|r| r.seq).collect();
    assert!(inside.contains(&2) && !inside.contains(&5));
    assert_eq!(inside, want);
    // Pages.
    let page1 = log.list(&Filter::default(), &all, 4, None).await.unwrap();
    let page2 = log.list(&Filter::default(), &all, 4, page1.last().map(|r| r.seq)).await.unwrap();
    assert_eq!((seqs(&page1), seqs(&page2)), (vec![1, 2, 3, 4], vec![5, 6]));
    // Scope: a department's own records and records naming its datasets.
    assert_eq!(list(Filter::default(), departments(&["shebao"])).await, vec![2, 3, 5]);
    assert_eq!(list(Filter::default(), departments(&["gongan"])).await, vec![1, 2, 4, 6]);
    assert_eq!(list(Filter::default(), departments(&["jiaoyu"])).await, vec![6]);
    assert_eq!(list(Filter::default(), departments(&["jiaoyu", "shebao"])).await, vec![2, 3, 5, 6]);
    assert_eq!(list(Filter::default(), departments(&[])).await, Vec::<u64>::new());
    assert_eq!(
        list(Filter { principal: Some("alice".into()), ..Filter::default() }, departments(&["shebao"])).await,
        vec![5]
    );
}

#[tokio::test]
async fn usage_counts_successful_reads() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    sample(&log).await;
    let usage = log.usage(None, None, None, &Scope::All).await.unwrap();
    let rows: Vec<(&str, Option<&str>, u64, u64)> =
        usage.iter().map(|u| (u.dataset.as_str(), u.department.as_deref(), u.reads, u.rows)).collect();
    assert_eq!(
        rows,
        vec![
            ("gongan.population", Some("jiaoyu"), 1, 3),
            ("gongan.population", Some("minzheng"), 2, 11),
            ("shebao.pensions", Some("minzheng"), 1, 1),
            ("shebao.pensions", Some("shebao"), 1, 0),
        ]
    );
    let records = log.list(&Filter::default(), &Scope::All, 100, None).await.unwrap();
    assert_eq!(usage[1].last_at, records[1].time);
    let one = log.usage(Some("shebao.pensions"), None, None, &Scope::All).await.unwrap();
    assert_eq!(one.len(), 2);
    let scoped = log.usage(None, None, None, &departments(&["jiaoyu"])).await.unwrap();
    assert_eq!(scoped.len(), 1);
    assert_eq!(scoped[0].department.as_deref(), Some("jiaoyu"));
    let scoped = log.usage(None, None, None, &departments(&["shebao"])).await.unwrap();
    assert_eq!(scoped.iter().map(|u| u.dataset.as_str()).collect::<Vec<_>>(), ["shebao.pensions", "shebao.pensions"]);
    let later = log.usage(None, Some(records[5].time + chrono::Duration::seconds(1)), None, &Scope::All).await.unwrap();
    assert!(later.is_empty());
    let early = chrono::Duration::microseconds(1);
    let window = log.usage(None, Some(records[1].time), Some(records[2].time), &Scope::All).await.unwrap();
    if records[1].time < records[2].time && records[0].time < records[1].time {
        let rows: Vec<(&str, u64)> = window.iter().map(|u| (u.dataset.as_str(), u.reads)).collect();
        assert_eq!(rows, vec![("gongan.population", 1), ("shebao.pensions", 1)]);
    }
    let until = log.usage(None, None, Some(records[0].time + early), &Scope::All).await.unwrap();
    assert_eq!(until.iter().map(|u| u.reads).sum::<u64>(), 1);
}

#[tokio::test]
async fn subject_hashes_are_stable_and_keyed() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    let a = log.subject_hash("110101199001011234");
    assert_eq!(a.len(), 64);
    assert_eq!(a, log.subject_hash("110101199001011234"));
    assert_ne!(a, log.subject_hash("110101199001011235"));
    // Not the `hash` mask of the same key, and not a plain digest.
    assert_ne!(a, HashKey::new(f.secret.key()).hash(b"110101199001011234"));
    assert_ne!(a, hex::encode(Sha256::digest(b"110101199001011234")));
    drop(log);
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    assert_eq!(a, log.subject_hash("110101199001011234"));
    let other = fixture();
    assert_ne!(a, AuditLog::open(&other.path, &other.secret).unwrap().subject_hash("110101199001011234"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_answers_sql() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    sample(&log).await;
    let ctx = SessionContext::new();
    ctx.register_table("t", log.table(Scope::All)).unwrap();
    let batches = ctx
        .sql("SELECT action, count(*) AS n FROM t GROUP BY action ORDER BY action")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut counts = Vec::new();
    for b in &batches {
        let actions = b.column(0).as_string::<i32>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            counts.push((actions.value(i).to_string(), n.value(i)));
        }
    }
    let want: Vec<(String, i64)> = [("dataset.create", 1), ("lookup", 1), ("push", 1), ("query", 3)]
        .iter()
        .map(|(a, n)| (a.to_string(), *n))
        .collect();
    assert_eq!(counts, want);

    let seqs_of = |batches: Vec<arrow::array::RecordBatch>| -> Vec<u64> {
        batches.iter().flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec()).collect()
    };
    let batches = ctx
        .sql("SELECT seq FROM t WHERE array_has(datasets, 'shebao.pensions') ORDER BY seq")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(seqs_of(batches), vec![2, 3, 5]);

    // Every column decodes; versions as JSON, time in UTC.
    let batches = ctx.sql("SELECT * FROM t WHERE seq = 2").await.unwrap().collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert_eq!(batches[0].schema().fields().len(), AuditTable::table_schema().fields().len());
    let batches = ctx
        .sql("SELECT rows, status, sql FROM t WHERE principal = 'bob' AND time <= now()")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<UInt64Type>().value(0), 1);
    assert!(batches[0].column(1).is_null(0) && batches[0].column(2).is_null(0));

    // A scoped table sees what the scope allows.
    ctx.register_table("s", log.table(departments(&["jiaoyu"]))).unwrap();
    let batches = ctx.sql("SELECT seq FROM s").await.unwrap().collect().await.unwrap();
    assert_eq!(seqs_of(batches), vec![6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_streams_in_pages() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    let n = 2 * table::PAGE as u64 + 5;
    for i in 0..n - 1 {
        let mut r = record(if i % 2 == 0 { "query" } else { "lookup" }, "alice", "minzheng", &["gongan.population"]);
        r.versions.insert("gongan.population".into(), 1);
        log.append_detached(r);
    }
    // Appends are written in order: once the last is durable, all are.
    assert_eq!(log.append(Record::new("query", "ok")).await.unwrap(), n);

    let ctx = SessionContext::new();
    let provider = log.table(Scope::All);
    let plan = provider.scan(&ctx.state(), Some(&vec![0, 10]), &[], None).await.unwrap();
    let mut stream = plan.execute(0, ctx.task_ctx()).unwrap();
    let mut sizes = Vec::new();
    let mut last = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.unwrap();
        assert_eq!(batch.num_columns(), 2);
        let seqs = batch.column(0).as_primitive::<UInt64Type>();
        assert_eq!(seqs.value(0), last + 1);
        last = seqs.value(seqs.len() - 1);
        sizes.push(batch.num_rows());
        assert_eq!(batch.column(1).as_string::<i32>().value(0), r#"{"gongan.population":1}"#);
    }
    assert_eq!(sizes, vec![table::PAGE, table::PAGE, 5]);

    let plan = provider.scan(&ctx.state(), Some(&vec![]), &[], Some(10)).await.unwrap();
    let batches: Vec<_> = plan.execute(0, ctx.task_ctx()).unwrap().collect().await;
    assert_eq!(batches.iter().map(|b| b.as_ref().unwrap().num_rows()).sum::<usize>(), 10);

    ctx.register_table("t", provider).unwrap();
    let batches = ctx.sql("SELECT count(*) FROM t").await.unwrap().collect().await.unwrap();
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), n as i64);
    let batches = ctx.sql("SELECT seq FROM t LIMIT 3").await.unwrap().collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let report = log.verify(None).await;
    assert!(report.ok && report.records == n, "{report:?}");
}

/// Appends `n` lookups, record `i` naming the subjects `k{i}` and `k{i+1}`.
async fn lookups(log: &AuditLog, n: u64) {
    for i in 0..n {
        let mut r = record("batch_lookup", "svc", "renshe", &["gongan.population"]);
        r.subjects = vec![log.subject_hash(&format!("k{i}")), log.subject_hash(&format!("k{}", i + 1))];
        log.append(r).await.unwrap();
    }
}

fn subjects_db(f: &Fixture) -> Connection {
    rw(&subjects::path_of(&f.path))
}

/// The subject index's rows as (key, seq).
fn index_rows(f: &Fixture) -> Vec<(i64, u64)> {
    subjects_db(f)
        .prepare("SELECT key, seq FROM subject_refs ORDER BY seq, key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn index_mark(f: &Fixture) -> u64 {
    subjects_db(f).query_row("SELECT seq FROM subject_mark", [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn the_subject_index_covers_the_log_at_close() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 5).await;
    append_n(&log, 2).await;
    let k3 = log.subject_hash("k3");
    log.close();
    assert_eq!(subjects::path_of(&f.path), f.path.with_file_name("audit-subjects.db"));
    assert_eq!(index_mark(&f), 7);
    let rows = index_rows(&f);
    assert_eq!(rows.len(), 10);
    let key = subjects::key_of(&k3);
    assert_eq!(rows.iter().filter(|(v, _)| *v == key).map(|(_, s)| *s).collect::<Vec<_>>(), vec![3, 4]);
    // Nothing of the subjects is left in the log's own index.
    let in_refs: u64 =
        rw(&f.path).query_row("SELECT count(*) FROM audit_refs WHERE kind = 'subject'", [], |r| r.get(0)).unwrap();
    assert_eq!(in_refs, 0);
    assert!(verify(&f, None).ok);
}

#[tokio::test]
async fn readers_find_subjects_past_the_mark_and_without_the_index() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 6).await;
    let (k3, k6) = (log.subject_hash("k3"), log.subject_hash("k6"));
    log.close();
    let reader = read::Reader::new(f.path.clone());
    let by = |subject: &str, dataset: Option<&str>| {
        let filter =
            Filter { subject: Some(subject.into()), dataset: dataset.map(str::to_string), ..Filter::default() };
        seqs(&reader.list(&filter, &Scope::All, 100, None).unwrap())
    };
    assert_eq!((by(&k3, None), by(&k6, None)), (vec![3, 4], vec![6]));
    // The index as it would be while the indexer is behind: covering records 1 to 3.
    let index = subjects_db(&f);
    index.execute("DELETE FROM subject_refs WHERE seq > 3", []).unwrap();
    index.execute("UPDATE subject_mark SET seq = 3", []).unwrap();
    assert_eq!((by(&k3, None), by(&k6, None)), (vec![3, 4], vec![6]));
    assert_eq!(by(&k3, Some("gongan.population")), vec![3, 4]);
    assert_eq!(by(&k3, Some("shebao.pensions")), Vec::<u64>::new());
    // The tail is not taken from the index: a row past the mark does not count.
    let key = subjects::key_of(&k3);
    index.execute("INSERT INTO subject_refs VALUES (0, ?1, 5)", [key]).unwrap();
    assert_eq!(by(&k3, None), vec![3, 4]);
    // A row under the subject's key for a record that does not name the
    // subject (a shared key prefix) is not taken either.
    index.execute("INSERT INTO subject_refs VALUES (0, ?1, 1)", [key]).unwrap();
    assert_eq!(by(&k3, None), vec![3, 4]);
    index.execute("DELETE FROM subject_refs WHERE seq = 1 AND key = ?1", [key]).unwrap();
    // Without an index file at all, the records' JSON answers.
    drop(index);
    std::fs::remove_file(subjects::path_of(&f.path)).unwrap();
    let reader = read::Reader::new(f.path.clone());
    let filter = Filter { subject: Some(k3.clone()), ..Filter::default() };
    assert_eq!(seqs(&reader.list(&filter, &Scope::All, 100, None).unwrap()), vec![3, 4]);
    assert!(verify(&f, None).ok);
}

#[tokio::test]
async fn the_subject_index_catches_up_and_is_rebuilt_for_another_log() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 4).await;
    log.close();
    let complete = index_rows(&f);
    // Lost flushes: the mark and rows of the last records are gone.
    let index = subjects_db(&f);
    index.execute("DELETE FROM subject_refs WHERE seq > 1", []).unwrap();
    let hash1: String = rw(&f.path).query_row("SELECT hash FROM audit_log WHERE seq = 1", [], |r| r.get(0)).unwrap();
    index.execute("UPDATE subject_mark SET seq = 1, hash = ?1", [&hash1]).unwrap();
    drop(index);
    AuditLog::open(&f.path, &f.secret).unwrap().close();
    assert_eq!((index_rows(&f), index_mark(&f)), (complete.clone(), 4));
    // An index whose mark is not this log's is emptied and rebuilt.
    let index = subjects_db(&f);
    index.execute("INSERT INTO subject_refs VALUES (0, 42, 2)", []).unwrap();
    index.execute("UPDATE subject_mark SET hash = 'not this log'", []).unwrap();
    drop(index);
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 1).await;
    log.close();
    let rows = index_rows(&f);
    assert_eq!(rows.len(), complete.len() + 2);
    assert!(rows.iter().all(|(v, _)| *v != 42));
    assert_eq!(index_mark(&f), 5);
    // A deleted index is rebuilt too.
    std::fs::remove_file(subjects::path_of(&f.path)).unwrap();
    AuditLog::open(&f.path, &f.secret).unwrap().close();
    assert_eq!(index_rows(&f), rows);
}

#[tokio::test]
async fn verify_checks_the_subject_index_up_to_its_mark() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 5).await;
    let k2 = subjects::key_of(&log.subject_hash("k2"));
    log.close();
    let index = subjects_db(&f);
    index.execute("DELETE FROM subject_refs WHERE key = ?1 AND seq = 2", [k2]).unwrap();
    assert_broken(&verify(&f, None), 2, "index row of record 2 disagrees");
    index.execute("INSERT INTO subject_refs VALUES (0, ?1, 2)", [k2]).unwrap();
    assert!(verify(&f, None).ok);
    index.execute("INSERT INTO subject_refs VALUES (0, ?1, 4)", [k2]).unwrap();
    assert_broken(&verify(&f, None), 4, "index row of record 4 disagrees");
    // Past the mark the index is not consulted, so not checked.
    index.execute("UPDATE subject_mark SET seq = 3", []).unwrap();
    assert!(verify(&f, None).ok);
}

#[tokio::test]
async fn a_log_of_schema_1_is_upgraded() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 3).await;
    let k1 = log.subject_hash("k1");
    log.close();
    // As version 1 kept them: subjects in audit_refs, no index file.
    std::fs::remove_file(subjects::path_of(&f.path)).unwrap();
    let conn = rw(&f.path);
    conn.execute("INSERT INTO audit_refs VALUES ('subject', ?1, 1)", [&k1]).unwrap();
    conn.execute_batch("PRAGMA user_version = 1").unwrap();
    let err = verify_file(&f.path, &f.secret, None).unwrap_err();
    assert!(err.to_string().contains("older schema version 1"), "{err}");
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    let filter = Filter { subject: Some(k1), ..Filter::default() };
    assert_eq!(seqs(&log.list(&filter, &Scope::All, 10, None).await.unwrap()), vec![1, 2]);
    log.close();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let in_refs: u64 =
        conn.query_row("SELECT count(*) FROM audit_refs WHERE kind = 'subject'", [], |r| r.get(0)).unwrap();
    assert_eq!((version, in_refs), (schema::VERSION, 0));
    assert!(verify(&f, None).ok);
}

#[tokio::test]
async fn the_subject_index_grows_in_generations() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    // Batch lookups of 1,000 subjects each, enough for two generations and
    // the start of a third; appended 16 at a time (group commits). A
    // generation is closed by the flush that crosses its bound, so it can
    // hold up to a flush more than the bound.
    let per_record = 1000;
    let most = subjects::GEN_REFS + subjects::MAX_PENDING as u64 + 16 * per_record;
    let records = 2 * most / per_record + 20;
    let subject = |i: u64| log.subject_hash(&format!("k{i}"));
    for chunk in (0..records).collect::<Vec<_>>().chunks(16) {
        let appends = chunk.iter().map(|r| {
            let mut rec = record("batch_lookup", "svc", "renshe", &["gongan.population"]);
            rec.subjects = (r * per_record..(r + 1) * per_record).map(subject).collect();
            log.append(rec)
        });
        for seq in futures::future::join_all(appends).await {
            seq.unwrap();
        }
    }
    let (first, middle, last) = (subject(5), subject(records / 2 * per_record + 7), subject(records * per_record - 1));
    log.close();
    let gens: Vec<(i64, u64)> = subjects_db(&f)
        .prepare("SELECT gen, count(*) FROM subject_refs GROUP BY gen ORDER BY gen")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(gens.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1, 2], "{gens:?}");
    assert!(gens[..2].iter().all(|g| (subjects::GEN_REFS..=most).contains(&g.1)), "{gens:?}");
    assert_eq!(gens.iter().map(|g| g.1).sum::<u64>(), records * per_record);
    // A subject is found in whichever generation holds it.
    let reader = read::Reader::new(f.path.clone());
    let by = |subject: &str| {
        let filter = Filter { subject: Some(subject.into()), ..Filter::default() };
        seqs(&reader.list(&filter, &Scope::All, 10, None).unwrap())
    };
    assert_eq!((by(&first), by(&middle), by(&last)), (vec![1], vec![records / 2 + 1], vec![records]));
    assert!(verify(&f, None).ok);
    // Reopened, inserts go on in the open generation.
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    let mut rec = record("lookup", "svc", "renshe", &["gongan.population"]);
    rec.subjects = vec![log.subject_hash("late")];
    let late = rec.subjects[0].clone();
    log.append(rec).await.unwrap();
    log.close();
    let newest: i64 = subjects_db(&f)
        .query_row("SELECT gen FROM subject_refs WHERE key = ?1", [subjects::key_of(&late)], |r| r.get(0))
        .unwrap();
    assert_eq!(newest, 2);
}

#[tokio::test]
async fn a_subject_index_of_version_1_is_rebuilt() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 4).await;
    let k2 = log.subject_hash("k2");
    log.close();
    let complete = index_rows(&f);
    // The layout of version 1: one B-tree of (value, seq).
    std::fs::remove_file(subjects::path_of(&f.path)).unwrap();
    subjects_db(&f)
        .execute_batch(
            "CREATE TABLE subject_refs (value TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (value, seq)) WITHOUT ROWID;
             CREATE INDEX subject_refs_seq ON subject_refs (seq);
             CREATE TABLE subject_mark (one INTEGER PRIMARY KEY CHECK (one = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL);
             INSERT INTO subject_mark VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
             PRAGMA user_version = 1;",
        )
        .unwrap();
    // Readers do not use it; they search the records.
    let reader = read::Reader::new(f.path.clone());
    let filter = Filter { subject: Some(k2.clone()), ..Filter::default() };
    assert_eq!(seqs(&reader.list(&filter, &Scope::All, 10, None).unwrap()), vec![2, 3]);
    // The indexer replaces it and rebuilds it from the log.
    AuditLog::open(&f.path, &f.secret).unwrap().close();
    assert_eq!((index_rows(&f), index_mark(&f)), (complete, 4));
    let version: i64 = subjects_db(&f).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 2);
    let reader = read::Reader::new(f.path.clone());
    assert_eq!(seqs(&reader.list(&filter, &Scope::All, 10, None).unwrap()), vec![2, 3]);
    assert!(verify(&f, None).ok);
}

#[tokio::test]
async fn a_log_of_schema_2_loses_its_time_and_seq_indexes() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 3).await;
    log.close();
    let conn = rw(&f.path);
    conn.execute_batch(
        "CREATE INDEX audit_index_at ON audit_index (at);
         CREATE INDEX audit_refs_seq ON audit_refs (seq);
         PRAGMA user_version = 2;",
    )
    .unwrap();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    lookups(&log, 2).await;
    log.close();
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(indexes, ["audit_index_action", "audit_index_department", "audit_index_principal"]);
    assert!(verify(&f, None).ok);
}

#[tokio::test]
async fn time_windows_are_found_by_seq() {
    let f = fixture();
    let log = AuditLog::open(&f.path, &f.secret).unwrap();
    // Batches of 1 to 5 records: records of one commit share its time.
    for n in 1..=12u64 {
        let appends = (0..n % 5 + 1).map(|_| log.append(record("query", "svc", "renshe", &["gongan.population"])));
        for seq in futures::future::join_all(appends).await {
            seq.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = log.list(&Filter::default(), &Scope::All, 1000, None).await.unwrap();
    log.close();
    let times: BTreeSet<String> = all.iter().map(|r| format_time(&r.time)).collect();
    assert!(times.len() >= 12, "{} distinct times", times.len());
    let conn = schema::open_reader(&f.path).unwrap();
    let mut probes: Vec<String> = times.iter().cloned().collect();
    probes.extend(["0000".to_string(), "9999".to_string()]);
    probes.extend(times.iter().map(|t| format!("{t} ")));
    for t in &probes {
        // The first record not older than t, or one past the last.
        let want = all
            .iter()
            .find(|r| format_time(&r.time).as_str() >= t.as_str())
            .map_or(all.len() as i64 + 1, |r| r.seq as i64);
        assert_eq!(read::first_seq_from(&conn, t).unwrap(), want, "{t}");
    }
    // The same windows through the reader, against a filter of every record.
    let reader = read::Reader::new(f.path.clone());
    for (a, b) in [(0, 5), (3, 3), (4, 20), (1, 2)] {
        let (from, to) = (all[a].time, all[b.min(all.len() - 1)].time);
        let filter = Filter { from: Some(from), to: Some(to), ..Filter::default() };
        let got = seqs(&reader.list(&filter, &Scope::All, 1000, None).unwrap());
        let want: Vec<u64> = all.iter().filter(|r| r.time >= from && r.time < to).map(|r| r.seq).collect();
        assert_eq!(got, want, "[{from}, {to})");
    }
}
