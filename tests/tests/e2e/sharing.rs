//! Sharing requests, grants and feedback end to end: ask, answer within a
//! deadline counted in working days, read what was approved, lose it on
//! revocation or expiry.

use chrono::{Datelike, Duration, NaiveDate, Utc, Weekday};
use gdx_tests::{TestServer, id_number, population};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn q(s: &TestServer, token: &str, sql: &str) -> (StatusCode, Value) {
    s.post("/api/v1/query", token, json!({"sql": sql})).await
}

fn column_names(v: &Value) -> Vec<String> {
    v["columns"].as_array().expect("columns").iter().map(|c| c["name"].as_str().expect("name").to_string()).collect()
}

/// gongan (provider, conditional residents of two counties), renshe (asks),
/// minzheng (a third department).
struct City {
    s: TestServer,
    steward: String,
    analyst: String,
    renshe_steward: String,
    stranger_steward: String,
    a: String,
}

async fn city(sharing: &str, change: impl FnOnce(&mut gdx_exchange::Config)) -> City {
    let s = TestServer::start_with(change).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    s.department("minzheng", "梅州市民政局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let renshe_steward = s.principal("rs", "renshe", &["steward"]).await;
    let stranger_steward = s.principal("ms", "minzheng", &["steward"]).await;
    let mut d = population("gongan", "residents", "1-02");
    d["sharing"] = json!(sharing);
    if sharing == "conditional" {
        d["sharing_condition"] = json!("依法履职需要");
    }
    let (code, v) = s.post("/api/v1/datasets", &steward, d).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (a, b) = (id_number("441402", "19800101", 1), id_number("441403", "19900101", 2));
    let csv = format!("id_number,name,county_code,income\n{a},张三,441402,100\n{b},李四,441403,200\n");
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    City { s, steward, analyst, renshe_steward, stranger_steward, a }
}

#[tokio::test]
async fn request_approve_read_what_was_approved_then_revoke() {
    let City { s, steward, analyst, renshe_steward, stranger_steward, a } = city("conditional", |_| {}).await;
    let sql = "SELECT * FROM gongan.residents";
    assert_eq!(q(&s, &analyst, sql).await.1["code"], "table_not_found");

    // Bad requests change nothing.
    let (code, v) = s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.residents"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "a purpose is required: {v}");
    let (code, v) =
        s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.residents", "purpose": "  "})).await;
    assert_eq!((code, v["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("purpose")), "{v}");
    let (code, _) =
        s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.nothing", "purpose": "x"})).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, v) = s
        .post(
            "/api/v1/sharing-requests",
            &analyst,
            json!({"dataset": "gongan.residents", "purpose": "x", "columns": ["income"], "unmask": ["county_code"]}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error_count"], 2, "a secret column and a column that is not personal: {v}");
    let own = s.principal("ga", "gongan", &["analyst"]).await;
    let (code, v) =
        s.post("/api/v1/sharing-requests", &own, json!({"dataset": "gongan.residents", "purpose": "x"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "the provider asks itself: {v}");
    let (code, v) =
        s.post("/api/v1/sharing-requests", &steward, json!({"dataset": "gongan.residents", "purpose": "x"})).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "stewards answer requests, analysts and services make them: {v}");

    let (code, req) = s
        .post(
            "/api/v1/sharing-requests",
            &analyst,
            json!({"dataset": "gongan.residents", "purpose": "养老保险待遇资格认证",
                   "columns": ["id_number", "name", "county_code"], "unmask": ["id_number"]}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{req}");
    assert_eq!(req["status"], "pending");
    assert_eq!(req["provider"], "gongan");
    assert_eq!(req["department"], "renshe");
    assert!(req["due_at"].as_str().is_some_and(|d| d.ends_with("15:59:59Z")), "23:59:59 in Shanghai: {req}");
    let id = req["id"].as_str().expect("id").to_string();
    let approve = format!("/api/v1/sharing-requests/{id}/approve");

    // The inbox of the provider, the requests of the consumer, nothing for a third department.
    let (_, v) = s.get("/api/v1/sharing-requests?role=provider", &steward).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = s.get("/api/v1/sharing-requests?role=consumer", &analyst).await;
    assert_eq!(v["items"][0]["id"], id.as_str(), "{v}");
    let (_, v) = s.get("/api/v1/sharing-requests", &stranger_steward).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{v}");
    let (code, _) = s.get(&format!("/api/v1/sharing-requests/{id}"), &stranger_steward).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // Only the provider's stewards answer, never the asking department.
    for (who, name) in [(&analyst, "the asking analyst"), (&renshe_steward, "the asking department's steward")] {
        let (code, v) = s.post(&approve, who, json!({})).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{name}: {v}");
    }
    let (code, v) = s.post(&approve, &stranger_steward, json!({})).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "another provider's steward: {v}");

    // Approval only narrows.
    let (code, v) = s.post(&approve, &steward, json!({"columns": ["id_number", "birth_date"]})).await;
    assert_eq!((code, v["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("columns[1]")), "{v}");
    let (code, v) = s.post(&approve, &steward, json!({"unmask": ["name"]})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (code, v) = s.post(&approve, &steward, json!({"row_filter": "county_code = "})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (code, v) = s
        .post(&approve, &steward, json!({"columns": ["id_number", "name"], "row_filter": "county_code = '441402'"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["approved"]["unmask"], json!(["id_number"]), "{v}");
    let grant = v["grant_id"].as_str().expect("grant id").to_string();
    let (code, _) = s.post(&approve, &steward, json!({})).await;
    assert_eq!(code, StatusCode::CONFLICT, "approving twice");
    let (code, _) = s.post(&format!("/api/v1/sharing-requests/{id}/reject"), &steward, json!({"reason": "x"})).await;
    assert_eq!(code, StatusCode::CONFLICT, "rejecting what was approved");

    // The grant is in force at once: the approved columns, the ID in clear, one county.
    let (code, v) = q(&s, &analyst, sql).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(column_names(&v), ["id_number", "name"]);
    assert_eq!(v["rows"], json!([[a, "张*"]]), "{v}");
    let (_, v) = s.get("/api/v1/grants?dataset=gongan.residents", &analyst).await;
    assert_eq!(v[0]["request"], id.as_str(), "{v}");

    // Revoked: the dataset leaves the caller's session.
    let (code, _) = s.call(reqwest::Method::DELETE, &format!("/api/v1/grants/{grant}"), Some(&steward), None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(q(&s, &analyst, sql).await.1["code"], "table_not_found");

    // A second request is rejected, with a reason only.
    let (_, req) =
        s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.residents", "purpose": "核验"})).await;
    let reject = format!("/api/v1/sharing-requests/{}/reject", req["id"].as_str().expect("id"));
    let (code, _) = s.post(&reject, &steward, json!({})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, v) = s.post(&reject, &steward, json!({"reason": "超出履职范围"})).await;
    assert_eq!(
        (code, v["status"].as_str(), v["reason"].as_str()),
        (StatusCode::OK, Some("rejected"), Some("超出履职范围"))
    );
    let (_, v) = s.get("/api/v1/sharing-requests?role=consumer&status=rejected", &analyst).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(q(&s, &analyst, sql).await.1["code"], "table_not_found");
}

#[tokio::test]
async fn unmask_of_an_unconditional_dataset_until_it_expires() {
    let City { s, steward, analyst, a, .. } = city("unconditional", |_| {}).await;
    let sql = "SELECT id_number, name FROM gongan.residents WHERE county_code = '441402'";
    let (_, v) = q(&s, &analyst, sql).await;
    assert_eq!(v["rows"][0][1], "张*", "masked by default: {v}");
    let (code, v) =
        s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.residents", "purpose": "x"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "nothing to ask for without unmask: {v}");
    let ends = Utc::now() + Duration::seconds(3);
    let (code, req) = s
        .post(
            "/api/v1/sharing-requests",
            &analyst,
            json!({"dataset": "gongan.residents", "purpose": "社保卡制发", "unmask": ["name"], "expires_at": ends}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{req}");
    let approve = format!("/api/v1/sharing-requests/{}/approve", req["id"].as_str().expect("id"));
    let later = ends + Duration::hours(1);
    let (code, v) = s.post(&approve, &steward, json!({"expires_at": later})).await;
    assert_eq!((code, v["errors"][0]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("expires_at")));
    let (code, v) = s.post(&approve, &steward, json!({})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let (_, v) = q(&s, &analyst, sql).await;
    assert_eq!(v["rows"][0][1], "张三", "the name in clear under the grant: {v}");
    assert_ne!(v["rows"][0][0], a.as_str(), "the ID stays hashed: only the name was asked for");
    let wait = (ends - Utc::now()).to_std().unwrap_or_default() + std::time::Duration::from_millis(100);
    tokio::time::sleep(wait).await;
    let (_, v) = q(&s, &analyst, sql).await;
    assert_eq!(v["rows"][0][1], "张*", "masked again once the grant expired: {v}");
}

/// A calendar file for the year ahead of today in Shanghai: a three-day
/// holiday starting tomorrow and the next weekend after it a make-up working
/// Saturday. The deadline must skip the first and count the second.
#[tokio::test]
async fn deadline_skips_a_holiday_and_counts_a_make_up_day() {
    let today = (Utc::now() + Duration::hours(8)).date_naive();
    let start = today + Duration::days(1);
    let holidays: Vec<NaiveDate> = (0..3).map(|i| start + Duration::days(i)).collect();
    let mut makeup = holidays[2] + Duration::days(1);
    while makeup.weekday() != Weekday::Sat {
        makeup += Duration::days(1);
    }
    let year = start.year();
    let in_year = |d: &NaiveDate| d.year() == year;
    let holidays: Vec<NaiveDate> = holidays.into_iter().filter(in_year).collect();
    let makeup: Vec<NaiveDate> = [makeup].into_iter().filter(in_year).collect();
    let file = json!({
        "year": year,
        "source": "test arrangement",
        "holidays": [{"name": "测试假期", "from": holidays.first(), "to": holidays.last()}],
        "makeup_workdays": makeup,
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("cn-holidays-{year}.json"));
    std::fs::write(&path, file.to_string()).expect("write calendar");
    let City { s, analyst, .. } = city("conditional", |c| {
        c.calendar_files = vec![path.clone()];
        c.request_due_working_days = 10;
    })
    .await;
    let (code, req) =
        s.post("/api/v1/sharing-requests", &analyst, json!({"dataset": "gongan.residents", "purpose": "x"})).await;
    assert_eq!(code, StatusCode::CREATED, "{req}");

    // Counted here independently: the tenth working day after today.
    let mut day = today;
    let mut counted = 0;
    while counted < 10 {
        day += Duration::days(1);
        let weekend = matches!(day.weekday(), Weekday::Sat | Weekday::Sun);
        if (!weekend && !holidays.contains(&day)) || makeup.contains(&day) {
            counted += 1;
        }
    }
    assert_eq!(req["due_on"], day.to_string(), "{req}");
    let explanation = req["due_explanation"].as_str().expect("explanation");
    if !holidays.is_empty() {
        assert!(explanation.contains("测试假期"), "{explanation}");
    }
    if !makeup.is_empty() {
        assert!(explanation.contains(&makeup[0].to_string()), "{explanation}");
    }
}

#[tokio::test]
async fn feedback_flagged_answered_and_seen_by_the_flagger() {
    let City { s, steward, analyst, stranger_steward, a, .. } = city("unconditional", |_| {}).await;
    let (code, _) =
        s.post("/api/v1/feedback", &analyst, json!({"dataset": "gongan.residents", "key": a, "comment": " "})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, fb) = s
        .post(
            "/api/v1/feedback",
            &analyst,
            json!({"dataset": "gongan.residents", "key": a, "column": "name", "comment": "姓名与社保登记不一致"}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{fb}");
    assert_eq!(fb["status"], "open");
    assert!(fb["due_at"].is_string());
    let resolve = format!("/api/v1/feedback/{}/resolve", fb["id"].as_str().expect("id"));
    let (_, inbox) = s.get("/api/v1/feedback?role=provider", &steward).await;
    assert_eq!(inbox["items"][0]["key"], a.as_str(), "{inbox}");
    let (code, _) = s.post(&resolve, &stranger_steward, json!({"outcome": "rejected", "reason": "x"})).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a third department does not see it");
    let (code, _) = s.post(&resolve, &analyst, json!({"outcome": "rejected", "reason": "x"})).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, v) = s.post(&resolve, &steward, json!({"outcome": "corrected"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "corrected in which version? {v}");
    let (code, v) = s.post(&resolve, &steward, json!({"outcome": "corrected", "version": 9})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "no such version: {v}");
    let (code, v) = s.post(&resolve, &steward, json!({"outcome": "corrected", "version": 1})).await;
    assert_eq!((code, v["status"].as_str()), (StatusCode::OK, Some("corrected")), "{v}");
    let (code, _) = s.post(&resolve, &steward, json!({"outcome": "rejected", "reason": "x"})).await;
    assert_eq!(code, StatusCode::CONFLICT);
    let (_, mine) = s.get("/api/v1/feedback?role=consumer", &analyst).await;
    assert_eq!(
        (mine["items"][0]["status"].as_str(), mine["items"][0]["version"].as_i64()),
        (Some("corrected"), Some(1))
    );
}
