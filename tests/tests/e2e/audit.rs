//! The audit trail end to end: every access and administrative act is
//! recorded before its answer leaves, auditors see what they oversee, the
//! chain verifies and names the record that was tampered with, and data
//! requests fail closed when the log cannot be written.

use std::path::PathBuf;

use gdx_tests::{TestServer, conditional_population, id_number};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct City {
    s: TestServer,
    steward: String,
    analyst: String,
    city_auditor: String,
    renshe_auditor: String,
    a: String,
}

async fn city() -> City {
    let s = TestServer::start_with(|c| c.supervisor_departments = vec!["shenji".into()]).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    s.department("shenji", "梅州市审计局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let city_auditor = s.principal("au", "shenji", &["auditor"]).await;
    let renshe_auditor = s.principal("ra", "renshe", &["auditor"]).await;
    let d = conditional_population("gongan", "residents", "1-02");
    let (code, v) = s.post("/api/v1/datasets", &steward, d).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let a = id_number("441402", "19800101", 1);
    let csv = format!("id_number,name,county_code,income\n{a},张三,441402,100\n");
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    City { s, steward, analyst, city_auditor, renshe_auditor, a }
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().unwrap_or_else(|| panic!("items in {v}")).clone()
}

fn secret_of(s: &TestServer) -> gdx_exchange::secret::PlatformSecret {
    let data = s.data_dir();
    let path = data.parent().expect("parent").join(gdx_exchange::secret::DEFAULT_FILE);
    gdx_exchange::secret::load(&path, &data).expect("platform secret")
}

fn audit_db(s: &TestServer) -> PathBuf {
    s.data_dir().join("audit.db")
}

#[tokio::test]
async fn accesses_are_recorded_scoped_counted_and_tracked() {
    let City { s, steward, analyst, city_auditor, renshe_auditor, a } = city().await;
    let (_, req) = s
        .post(
            "/api/v1/sharing-requests",
            &analyst,
            json!({"dataset": "gongan.residents", "purpose": "养老金资格认证", "unmask": ["id_number"]}),
        )
        .await;
    let approve = format!("/api/v1/sharing-requests/{}/approve", req["id"].as_str().expect("id"));
    let (code, _) = s.post(&approve, &steward, json!({})).await;
    assert_eq!(code, StatusCode::OK);
    let sql = "SELECT id_number, name FROM gongan.residents";
    let (code, v) = s.post("/api/v1/query", &analyst, json!({"sql": sql, "purpose": "资格认证"})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, _) = s.post("/api/v1/departments", &analyst, json!({"id": "x", "name": "x"})).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _) = s.get("/api/v1/sharing-requests", "not-a-token").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = s
        .post("/api/v1/feedback", &analyst, json!({"dataset": "gongan.residents", "key": a, "comment": "地址已变更"}))
        .await;
    assert_eq!(code, StatusCode::CREATED);

    // The query's record: who, what, which version, how many rows, why.
    let (code, v) = s.get("/api/v1/audit?action=query", &city_auditor).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let q = &items(&v)[0];
    assert_eq!(
        (q["principal"].as_str(), q["department"].as_str(), q["sql"].as_str(), q["purpose"].as_str()),
        (Some("an"), Some("renshe"), Some(sql), Some("资格认证")),
        "{q}"
    );
    assert_eq!((&q["versions"], &q["rows"], &q["outcome"]), (&json!({"gongan.residents": 1}), &json!(1), &json!("ok")));

    // Denials, refused credentials and administrative acts are there too.
    let (_, all) = s.get("/api/v1/audit?limit=1000", &city_auditor).await;
    let all = items(&all);
    let has = |action: &str, outcome: &str| all.iter().any(|r| r["action"] == action && r["outcome"] == outcome);
    assert!(has("department.create", "denied"), "the analyst's denied attempt");
    assert!(all.iter().any(|r| r["outcome"] == "unauthenticated" && r["principal"].is_null()));
    for action in ["dataset.create", "dataset.push", "request.create", "request.approve", "feedback.create"] {
        assert!(has(action, "ok"), "{action} recorded");
    }
    assert!(all.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()), "oldest first");
    let (_, page) = s.get("/api/v1/audit?limit=2", &city_auditor).await;
    let token = page["next_page_token"].as_str().expect("more pages");
    let (_, next) = s.get(&format!("/api/v1/audit?limit=2&page_token={token}"), &city_auditor).await;
    assert_eq!(items(&next)[0]["seq"], all[2]["seq"]);

    // An auditor of renshe sees renshe's records and the datasets renshe provides, not gongan's own acts.
    let (_, v) = s.get("/api/v1/audit?limit=1000", &renshe_auditor).await;
    let mine = items(&v);
    assert!(mine.iter().any(|r| r["action"] == "query"));
    assert!(mine.iter().all(|r| r["department"] == "renshe"), "{mine:?}");
    let (code, _) = s.get("/api/v1/audit", &analyst).await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    // Auditors query the log with SQL; nobody else has it.
    let (code, v) = s
        .post(
            "/api/v1/query",
            &city_auditor,
            json!({"sql": "SELECT count(*) AS n FROM gdx.audit WHERE action = 'query' AND array_has(datasets, 'gongan.residents')"}),
        )
        .await;
    assert_eq!((code, &v["rows"]), (StatusCode::OK, &json!([[1]])), "{v}");
    let (_, v) = s.post("/api/v1/query", &analyst, json!({"sql": "SELECT * FROM gdx.audit"})).await;
    assert_eq!(v["code"], "table_not_found", "{v}");
    let (_, v) = s.post("/api/v1/query", &city_auditor, json!({"sql": "SELECT * FROM gongan.residents"})).await;
    assert_eq!(v["code"], "table_not_found", "auditors read no data: {v}");

    // A streamed answer gets a second record once its body has left: the rows sent.
    let csv = reqwest::Client::new()
        .post(format!("{}/api/v1/query", s.url()))
        .bearer_auth(&analyst)
        .header(reqwest::header::ACCEPT, "text/csv")
        .json(&json!({"sql": sql, "purpose": "导出"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(csv.status(), StatusCode::OK);
    assert_eq!(csv.text().await.expect("body").lines().count(), 2, "header and one row");
    let mut streamed = Vec::new();
    for _ in 0..50 {
        let (_, v) = s.get("/api/v1/audit?action=query.streamed", &city_auditor).await;
        streamed = items(&v);
        if !streamed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        (streamed.len(), &streamed[0]["rows"], &streamed[0]["outcome"], &streamed[0]["purpose"]),
        (1, &json!(1), &json!("ok"), &json!("导出")),
        "{streamed:?}"
    );

    // Usage per dataset and consumer department.
    let (_, v) = s.get("/api/v1/stats/usage?dataset=gongan.residents", &city_auditor).await;
    let usage = items(&v);
    assert_eq!((usage.len(), &usage[0]["department"], &usage[0]["reads"]), (1, &json!("renshe"), &json!(2)), "{v}");

    // The data tracker: who touched this citizen's records, by the keyed hash only.
    let (code, v) = s.get(&format!("/api/v1/audit/subjects/{a}"), &city_auditor).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let tracked = items(&v);
    assert_eq!(
        (tracked.len(), &tracked[0]["department"], &tracked[0]["action"]),
        (1, &json!("renshe"), &json!("feedback.create"))
    );
    let (_, raw) = s.get("/api/v1/audit?action=feedback.create", &city_auditor).await;
    assert!(!raw.to_string().contains(&a), "the key is never stored in clear");

    // The chain holds.
    let (code, v) = s.get("/api/v1/audit/verify", &city_auditor).await;
    assert_eq!((code, &v["ok"]), (StatusCode::OK, &json!(true)), "{v}");
    assert!(v["records"].as_u64() >= Some(all.len() as u64));
}

#[tokio::test]
async fn overdue_work_is_listed_for_supervisors() {
    use gdx_catalog::MetaStore;
    let City { s, analyst, city_auditor, renshe_auditor, .. } = city().await;
    let (_, req) =
        s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.residents", "purpose": "核验"})).await;
    // Another process moves the deadline into the past (as if it had passed).
    let store = gdx_catalog::SqliteStore::open(&s.data_dir().join("meta.db")).expect("store");
    let id = req["id"].as_str().expect("id");
    let mut late = store.request(id).await.expect("request");
    late.id = "req_late".into();
    late.due_at = chrono::Utc::now() - chrono::Duration::days(1);
    store.create_request(late).await.expect("insert");
    for auditor in [&city_auditor, &renshe_auditor] {
        let (code, v) = s.get("/api/v1/supervision/overdue", auditor).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        let ids: Vec<&str> =
            v["requests"].as_array().expect("requests").iter().filter_map(|r| r["id"].as_str()).collect();
        assert_eq!(ids, ["req_late"], "{v}");
        assert_eq!(v["requests"][0]["overdue"], true);
    }
    let (_, v) = s.get("/api/v1/sharing-requests?overdue=true", &analyst).await;
    assert_eq!(items(&v).len(), 1, "{v}");
}

#[tokio::test]
async fn an_edited_record_or_a_cut_tail_is_named() {
    let City { mut s, analyst, city_auditor, .. } = city().await;
    for _ in 0..3 {
        let (code, _) =
            s.post("/api/v1/query", &analyst, json!({"sql": "SELECT count(*) FROM gongan.residents"})).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "not granted: a recorded refusal");
    }
    let (_, v) = s.get("/api/v1/audit/verify", &city_auditor).await;
    assert_eq!(v["ok"], true, "{v}");
    let head_before = v["head"].as_str().expect("head").to_string();
    let records = v["records"].as_u64().expect("records");
    s.stop().await;
    let secret = secret_of(&s);
    let path = audit_db(&s);
    let verify = |expect: Option<&str>| gdx_exchange::audit::verify_file(&path, &secret, expect).expect("verifies");
    let clean = verify(Some(&head_before));
    assert!(clean.ok, "{clean:?}");

    // An edited record: verify names it.
    let db = rusqlite::Connection::open(&path).expect("open audit.db");
    let original: String = db.query_row("SELECT record FROM audit_log WHERE seq = 5", [], |r| r.get(0)).expect("row");
    let forged = original.replacen("\"action\":\"", "\"action\":\"forged.", 1);
    assert_ne!(forged, original);
    db.execute("UPDATE audit_log SET record = ?1 WHERE seq = 5", [&forged]).expect("edit");
    let report = verify(None);
    assert_eq!((report.ok, report.first_broken), (false, Some(5)), "{report:?}");
    db.execute("UPDATE audit_log SET record = ?1 WHERE seq = 5", [&original]).expect("restore");
    assert!(verify(None).ok);

    // A cut tail (records and their checkpoints gone) fails against the head noted before.
    db.execute("DELETE FROM audit_log WHERE seq > ?1", [records - 2]).expect("cut");
    db.execute("DELETE FROM audit_checkpoints WHERE seq > ?1", [records - 2]).expect("cut");
    db.execute("DELETE FROM audit_refs WHERE seq > ?1", [records - 2]).expect("cut");
    db.execute("DELETE FROM audit_index WHERE seq > ?1", [records - 2]).expect("cut");
    let report = verify(Some(&head_before));
    assert!(!report.ok, "{report:?}");
    assert_eq!(report.first_broken, Some(records - 1), "{report:?}");
    drop(db);

    // The server verifies the same file when it runs again.
    let dir = s.data_dir();
    s.start_on(&dir).await;
    let (_, v) = s.get(&format!("/api/v1/audit/verify?expect_head={head_before}"), &city_auditor).await;
    assert_eq!(v["ok"], false, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_requests_fail_closed_when_the_log_cannot_be_written() {
    let City { s, steward, .. } = city().await;
    let sql = json!({"sql": "SELECT count(*) FROM gongan.residents"});
    let (code, _) = s.post("/api/v1/query", &steward, sql.clone()).await;
    assert_eq!(code, StatusCode::OK);
    // Another process holds the audit database's write lock.
    let db = rusqlite::Connection::open(audit_db(&s)).expect("open audit.db");
    db.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let (code, v) = s.post("/api/v1/query", &steward, sql.clone()).await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")), "{v}");
    assert!(v.get("rows").is_none(), "no data served unrecorded");
    assert!(!v.to_string().contains("audit.db"), "no path in the answer: {v}");
    db.execute_batch("COMMIT").expect("unlock");
    let (code, v) = s.post("/api/v1/query", &steward, sql).await;
    assert_eq!((code, &v["rows"]), (StatusCode::OK, &json!([[1]])), "{v}");
}
