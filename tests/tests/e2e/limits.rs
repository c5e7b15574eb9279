//! Limits: a principal's request rate (429 with Retry-After), its
//! concurrent queries, the audit alert on many distinct subjects, and
//! clients that send too slowly or too much.

use std::time::Duration;

use gdx_exchange::config::PrincipalLimits;
use gdx_tests::{ADMIN, TestServer, conditional_population, id_number, population};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn only(principal: &str, limits: PrincipalLimits) -> impl FnOnce(&mut gdx_exchange::config::Config) {
    let principal = principal.to_string();
    move |c| {
        c.supervisor_departments = vec!["shenji".into()];
        c.query_max_rows = 10_000_000;
        c.limits.principals.insert(principal, limits);
    }
}

/// The seconds of a 429's `Retry-After`.
fn retry_after(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds")
}

/// A department with a dataset of `rows` people, its steward `st` and a city auditor `au`.
async fn city(s: &TestServer, rows: u32) -> (String, String, Vec<String>) {
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("shenji", "梅州市审计局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let auditor = s.principal("au", "shenji", &["auditor"]).await;
    let (code, v) = s.post("/api/v1/datasets", &steward, population("gongan", "residents", "1-02")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let ids: Vec<String> = (1..=rows).map(|i| id_number("441402", "19800101", i)).collect();
    let mut csv = String::from("id_number,name,birth_date,county_code,income\n");
    for id in &ids {
        csv.push_str(&format!("{id},张三,1980-01-01,441402,100\n"));
    }
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    (steward, auditor, ids)
}

#[tokio::test]
async fn a_principal_over_its_rate_is_told_to_wait_and_others_are_not() {
    let s = TestServer::start_with(only("st", PrincipalLimits { requests_per_second: Some(5), ..Default::default() }))
        .await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    // A burst of two seconds' worth (10) passes; then the bucket is empty.
    let mut limited = None;
    for i in 0..30 {
        let resp = s.http().get(format!("{}/api/v1/me", s.url())).bearer_auth(&steward).send().await.expect("request");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some((i, resp));
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let (i, resp) = limited.expect("the rate limit answers 429");
    assert!((9..=12).contains(&i), "the burst is about 10 requests, the 429 came after {i}");
    let wait = retry_after(&resp);
    assert!((1..=2).contains(&wait), "{wait}");
    let v: Value = resp.json().await.expect("problem");
    assert_eq!(v["code"], "rate_limited", "{v}");
    // The administrator has the default rate, untouched by st's.
    let (code, _) = s.get("/api/v1/me", ADMIN).await;
    assert_eq!(code, StatusCode::OK);
    // After the wait, st may go on.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (code, _) = s.get("/api/v1/me", &steward).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn queries_at_once_are_capped_per_principal_until_an_answer_ends() {
    let s =
        TestServer::start_with(only("st", PrincipalLimits { concurrent_queries: Some(1), ..Default::default() })).await;
    let (steward, auditor, _) = city(&s, 1000).await;
    // A streamed answer of a million rows, not read: it holds st's one query slot.
    let big = json!({"sql": "SELECT a.id_number, b.name FROM gongan.residents a CROSS JOIN gongan.residents b"});
    let held = s
        .http()
        .post(format!("{}/api/v1/query", s.url()))
        .bearer_auth(&steward)
        .header("accept", "text/csv")
        .json(&big)
        .send()
        .await
        .expect("query");
    assert_eq!(held.status(), StatusCode::OK);
    let small = json!({"sql": "SELECT count(*) AS n FROM gongan.residents"});
    let (code, v) = s.post("/api/v1/query", &steward, small.clone()).await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited")), "{v}");
    // Another principal is not held up by st's queries.
    let (code, v) = s.post("/api/v1/query", &auditor, json!({"sql": "SELECT count(*) AS n FROM gdx.audit"})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    // Dropping the answer ends the stream and frees the slot.
    drop(held);
    let mut freed = false;
    for _ in 0..100 {
        let (code, v) = s.post("/api/v1/query", &steward, small.clone()).await;
        if code == StatusCode::OK {
            assert_eq!(v["rows"], json!([[1000]]), "{v}");
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the slot is freed once the held answer is gone");
}

#[tokio::test]
async fn many_distinct_subjects_in_a_day_raise_one_audit_alert() {
    let s = TestServer::start_with(only(
        "st",
        PrincipalLimits { distinct_subjects_per_day: Some(3), ..Default::default() },
    ))
    .await;
    let (steward, auditor, ids) = city(&s, 5).await;
    let alerts = || async {
        let (code, v) = s.get("/api/v1/audit?action=alert.distinct_subjects", &auditor).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    };
    // The same subject again and again is one subject.
    for _ in 0..3 {
        let (code, v) = s.get(&format!("/api/v1/datasets/gongan.residents/records/{}", ids[0]), &steward).await;
        assert_eq!(code, StatusCode::OK, "{v}");
    }
    let (code, _) = s.get(&format!("/api/v1/datasets/gongan.residents/records/{}", ids[1]), &steward).await;
    assert_eq!(code, StatusCode::OK);
    assert!(alerts().await.is_empty());
    // The third distinct subject (here in a batch) reaches the threshold.
    let (code, v) = s
        .post("/api/v1/datasets/gongan.residents/records:batchGet", &steward, json!({"keys": [ids[1], ids[2], ids[3]]}))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let found = alerts().await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((&found[0]["principal"], &found[0]["outcome"]), (&json!("st"), &json!("alert")), "{found:?}");
    assert!(found[0]["detail"].as_str().is_some_and(|d| d.contains("3 distinct subjects")), "{found:?}");
    // Lookups go on, and the alert is not repeated the same day.
    let (code, _) = s.get(&format!("/api/v1/datasets/gongan.residents/records/{}", ids[4]), &steward).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(alerts().await.len(), 1);
}

/// Reads what the server sends until it closes the connection, or gives up after `within`.
async fn until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn slow_clients_are_disconnected_and_stalled_bodies_answered_408() {
    let s = TestServer::start_with(|c| {
        c.header_timeout_secs = 1;
        c.body_timeout_secs = 1;
    })
    .await;
    let addr = s.url().trim_start_matches("http://").to_string();
    // A request head that never ends.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let closed = until_closed(&mut slow, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "a slow head is cut off");
    // A connection that says nothing at all.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    assert!(until_closed(&mut silent, Duration::from_secs(10)).await.is_some(), "a silent connection is closed");
    // A body that stops halfway.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /api/v1/departments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":"
    );
    stalled.write_all(head.as_bytes()).await.expect("write");
    let answer = until_closed(&mut stalled, Duration::from_secs(10)).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The server is unharmed.
    let (code, _) = s.get("/api/v1/me", ADMIN).await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn oversized_and_malformed_json_are_refused_before_any_work() {
    let s = TestServer::start().await;
    let url = format!("{}/api/v1/departments", s.url());
    let huge = format!("{{\"id\":\"x\",\"name\":\"{}\"}}", "名".repeat(600_000));
    let resp = s
        .http()
        .post(&url)
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for (body, status) in [
        ("{\"id\": ", StatusCode::BAD_REQUEST),
        ("[1,2,3]", StatusCode::UNPROCESSABLE_ENTITY),
        ("{\"id\": \"x\", \"name\": 7}", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let resp = s
            .http()
            .post(&url)
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), status, "{}", &body[..body.len().min(40)]);
        let v: Value = resp.json().await.expect("problem+json");
        assert!(v["code"].is_string(), "{v}");
    }
    // Deep nesting is refused without exhausting the stack.
    for deep in [format!("{{\"id\":\"x\",\"name\":{}", "[".repeat(100_000)), "[".repeat(100_000)] {
        let resp = s
            .http()
            .post(&url)
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body(deep)
            .send()
            .await
            .expect("request");
        assert!(matches!(resp.status().as_u16(), 400 | 422), "{}", resp.status());
    }
    let (code, v) = s.get("/api/v1/departments", ADMIN).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "nothing was created: {v}");
}

#[tokio::test]
async fn a_grant_with_a_daily_quota_stops_reads_once_its_rows_are_spent() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let d = conditional_population("gongan", "residents", "1-02");
    let (code, v) = s.post("/api/v1/datasets", &steward, d).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let mut csv = String::from("id_number,name,birth_date,county_code,income\n");
    for i in 1..=2 {
        csv.push_str(&format!("{},张三,1980-01-01,441402,100\n", id_number("441402", "19800101", i)));
    }
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (_, req) = s
        .post(
            "/api/v1/sharing-requests",
            &analyst,
            json!({"dataset": "gongan.residents", "purpose": "社保待遇发放核对"}),
        )
        .await;
    let id = req["id"].as_str().expect("request id");
    let approve = format!("/api/v1/sharing-requests/{id}/approve");
    let (code, v) = s.post(&approve, &steward, json!({"rows_per_day": 0})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (code, v) = s.post(&approve, &steward, json!({"rows_per_day": 3})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["approved"]["rows_per_day"], 3, "{v}");
    let (_, grants) = s.get("/api/v1/grants", &analyst).await;
    assert_eq!(grants[0]["rows_per_day"], 3, "{grants}");

    let sql = json!({"sql": "SELECT name FROM gongan.residents"});
    // 2 rows, then 2 more (the answer that crosses the quota is given whole), then none.
    for _ in 0..2 {
        let (code, v) = s.post("/api/v1/query", &analyst, sql.clone()).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        assert_eq!(v["rows"].as_array().map(Vec::len), Some(2), "{v}");
    }
    let resp = s
        .http()
        .post(format!("{}/api/v1/query", s.url()))
        .bearer_auth(&analyst)
        .json(&sql)
        .send()
        .await
        .expect("query");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&resp);
    assert!((1..=86_400).contains(&wait), "until midnight in Asia/Shanghai: {wait}");
    let v: Value = resp.json().await.expect("problem");
    assert_eq!(v["code"], "quota_exceeded", "{v}");
    // A query of something else still runs; the provider is not limited by its grants.
    let (code, v) = s.post("/api/v1/query", &analyst, json!({"sql": "SELECT 1"})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (code, _) = s.post("/api/v1/query", &steward, sql.clone()).await;
    assert_eq!(code, StatusCode::OK);
    // A retention no clock can hold is invalid input, not a failure.
    let (code, v) = s
        .post(
            "/api/v1/datasets/gongan.residents/maintenance",
            &steward,
            json!({"retention_hours": 760377615445593088u64}),
        )
        .await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("validation_failed")), "{v}");
}
