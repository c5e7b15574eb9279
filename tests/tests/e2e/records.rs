//! Record lookups and verification: the access plan of SQL applied to one
//! key, through the record index; the index follows versions, survives a
//! restart and is rebuilt from the lake when it is lost.

use gdx_tests::{TestServer, id_number, population};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct City {
    s: TestServer,
    steward: String,
    service: String,
    a: String,
    b: String,
}

async fn city() -> City {
    let s = TestServer::start_with(|c| c.supervisor_departments = vec!["shenji".into()]).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let service = s.principal("sv", "renshe", &["service"]).await;
    let (code, v) = s.post("/api/v1/datasets", &steward, population("gongan", "residents", "1-02")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (a, b) = (id_number("441402", "19800101", 1), id_number("441403", "19900101", 2));
    let csv = format!(
        "id_number,name,birth_date,county_code,income\n{a},张三,1980-01-01,441402,100\n{b},李四,1990-01-01,441403,200\n"
    );
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // renshe sees one county only.
    let (code, v) = s
        .call(
            reqwest::Method::PUT,
            "/api/v1/datasets/gongan.residents/policy",
            Some(&steward),
            Some(json!({"masks": [], "row_filters": [{"for": "renshe", "filter": "county_code = '441402'"}]})),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    City { s, steward, service, a, b }
}

fn record(path: &str) -> String {
    format!("/api/v1/datasets/gongan.residents/records{path}")
}

#[tokio::test]
async fn lookups_follow_the_access_plan_and_are_tracked() {
    let City { s, steward, service, a, b } = city().await;
    // The provider's steward reads its records in clear.
    let (code, v) = s.get(&record(&format!("/{a}")), &steward).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        (&v["record"]["name"], &v["record"]["income"], &v["version"]),
        (&json!("张三"), &json!("100.00"), &json!(1))
    );
    // A single lookup writes its record directly; a batch builds it value by value: the same record.
    let (code, batch) = s.post(&record(":batchGet"), &steward, json!({"keys": [a]})).await;
    assert_eq!(code, StatusCode::OK, "{batch}");
    assert_eq!(batch["records"], json!([v["record"]]));
    assert_eq!(v.as_object().map(|o| o.len()), Some(2), "record and version only: {v}");

    // A service of another department: the ID is hashed for it, so no lookup (it would be an oracle).
    let (code, v) = s.get(&record(&format!("/{a}")), &service).await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("access_denied")), "{v}");
    // Verification needs read access only, and tells match or no match.
    let verify = |key: &str, name: &str| json!({"key": key, "fields": {"name": name, "county_code": "441402"}});
    let (code, v) = s.post(&record(":verify"), &service, verify(&a, "张三")).await;
    assert_eq!((code, &v), (StatusCode::OK, &json!({"found": true, "matches": {"name": true, "county_code": true}})));
    let (_, v) = s.post(&record(":verify"), &service, verify(&a, "张四")).await;
    assert_eq!(v["matches"]["name"], false, "{v}");
    let (_, v) = s.post(&record(":verify"), &service, verify(&b, "李四")).await;
    assert_eq!(v["found"], false, "outside renshe's county, as if absent: {v}");
    let (code, v) = s.post(&record(":verify"), &service, json!({"key": a, "fields": {"income": "100.00"}})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "a secret column is no oracle either: {v}");

    // A grant unmasks the ID: lookups work, with the rest of the plan (name masked, income hidden, one county).
    let (_, req) = s
        .post(
            "/api/v1/sharing-requests",
            &service,
            json!({"dataset": "gongan.residents", "purpose": "社保待遇发放核对", "unmask": ["id_number"]}),
        )
        .await;
    let approve = format!("/api/v1/sharing-requests/{}/approve", req["id"].as_str().expect("id"));
    assert_eq!(s.post(&approve, &steward, json!({})).await.0, StatusCode::OK);
    let (code, v) = s.get(&record(&format!("/{a}")), &service).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["record"]["id_number"], a.as_str());
    assert_eq!(v["record"]["name"], "张*");
    assert!(v["record"].get("income").is_none(), "secret: {v}");
    let absent = id_number("441402", "20000101", 9);
    for key in [&b, &absent] {
        let (code, v) = s.get(&record(&format!("/{key}")), &service).await;
        assert_eq!((code, v["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{v}");
        assert!(!v.to_string().contains(key.as_str()), "the key is not echoed: {v}");
    }
    let (code, v) = s.get(&record(&format!("?id_number={a}")), &service).await;
    assert_eq!((code, &v["record"]["id_number"]), (StatusCode::OK, &json!(a)), "{v}");

    // A batch: duplicates answered once, missing and filtered-out keys listed as sent.
    let (code, v) = s.post(&record(":batchGet"), &service, json!({"keys": [a, absent, a, {"id_number": b}]})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["records"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["missing"], json!([absent, {"id_number": b}]), "{v}");
    let (code, _) = s.post(&record(":batchGet"), &service, json!({"keys": []})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let (code, _) = s.post(&record(":batchGet"), &service, json!({"keys": too_many})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);

    // An analyst has no lookups (services do); an unknown dataset is 404.
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    assert_eq!(s.get(&record(&format!("/{a}")), &analyst).await.0, StatusCode::FORBIDDEN);
    let (code, _) = s.get(&format!("/api/v1/datasets/gongan.nothing/records/{a}"), &service).await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // The data tracker: who looked up this citizen, when, for what.
    s.department("shenji", "梅州市审计局", "441400").await;
    let auditor = s.principal("au", "shenji", &["auditor"]).await;
    let (code, v) = s.get(&format!("/api/v1/audit/subjects/{a}"), &auditor).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let actions: Vec<(String, String)> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| (r["department"].as_str().unwrap_or("").to_string(), r["action"].as_str().unwrap_or("").to_string()))
        .collect();
    for want in ["lookup", "batch_lookup", "verify"] {
        assert!(actions.contains(&("renshe".to_string(), want.to_string())), "{want} in {actions:?}");
    }
    assert!(actions.contains(&("gongan".to_string(), "lookup".to_string())), "{actions:?}");
    let (_, raw) = s.get("/api/v1/audit?action=lookup", &auditor).await;
    assert!(!raw.to_string().contains(&a), "keys are stored as keyed hashes only");
}

#[tokio::test]
async fn versions_restart_and_a_lost_index() {
    let City { mut s, steward, a, .. } = city().await;
    let csv = format!("id_number,name,birth_date,county_code,income\n{a},张三丰,1980-01-01,441402,300\n");
    let (code, v) = s
        .upload("/api/v1/datasets/gongan.residents/versions?mode=upsert", &steward, "text/csv", csv.into_bytes(), &[])
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let get = |path: String| {
        let (s, steward) = (&s, &steward);
        async move { s.get(&path, steward).await }
    };
    let (_, v) = get(record(&format!("/{a}"))).await;
    assert_eq!((&v["record"]["name"], &v["version"]), (&json!("张三丰"), &json!(2)), "{v}");
    let (_, v) = get(record(&format!("/{a}?as_of=1"))).await;
    assert_eq!((&v["record"]["name"], &v["version"]), (&json!("张三"), &json!(1)), "{v}");
    let (code, _) = get(record(&format!("/{a}?as_of=7"))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);

    // The index is on disk, written at commit; a restart reads it, not rebuilds it.
    let index = s.data_dir().join("index").join("gongan").join("residents");
    let stamps = |dir: &std::path::Path| -> Vec<(String, std::time::SystemTime)> {
        let mut out: Vec<_> = std::fs::read_dir(dir)
            .expect("index folder")
            .flatten()
            .map(|e| {
                (e.file_name().to_string_lossy().into_owned(), e.metadata().and_then(|m| m.modified()).expect("mtime"))
            })
            .collect();
        out.sort();
        out
    };
    let before = stamps(&index);
    assert!(!before.is_empty() && before.iter().all(|(n, _)| n.ends_with(".keys")), "{before:?}");
    let dir = s.data_dir();
    s.start_on(&dir).await;
    let (_, v) = s.get(&record(&format!("/{a}")), gdx_tests::ADMIN).await;
    assert_eq!(v["code"], "access_denied", "administrators read no data: {v}");
    let (_, v) = s.get(&record(&format!("/{a}")), &steward).await;
    assert_eq!(v["record"]["name"], "张三丰", "{v}");
    assert_eq!(stamps(&index), before, "the index was read, not rebuilt");

    // Lost: rebuilt from the lake on the next lookup.
    std::fs::remove_dir_all(s.data_dir().join("index")).expect("remove index");
    let (_, v) = s.get(&record(&format!("/{a}?as_of=1")), &steward).await;
    assert_eq!(v["record"]["name"], "张三", "{v}");
    let (_, v) = s.get(&record(&format!("/{a}")), &steward).await;
    assert_eq!(v["record"]["name"], "张三丰", "{v}");
    assert!(!stamps(&index).is_empty());

    // Lost while stopped: the start loads the index of the current version
    // in the background, building it again, before any lookup asks.
    s.stop().await;
    std::fs::remove_dir_all(s.data_dir().join("index")).expect("remove index");
    s.start_on(&dir).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !index.is_dir() || !stamps(&index).iter().any(|(n, _)| n.ends_with(".keys")) {
        assert!(std::time::Instant::now() < deadline, "the index was not built at start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, v) = s.get(&record(&format!("/{a}")), &steward).await;
    assert_eq!(v["record"]["name"], "张三丰", "{v}");
}

#[tokio::test]
async fn a_column_added_later_reads_as_null_from_older_files() {
    let City { s, steward, a, b, .. } = city().await;
    let (_, v) = s.get(&record(&format!("/{a}")), &steward).await;
    assert_eq!(v["record"].as_object().map(|r| r.contains_key("phone")), Some(false), "{v}");
    let (_, d) = s.get("/api/v1/datasets/gongan.residents", &steward).await;
    let mut columns = d["columns"].clone();
    columns.as_array_mut().expect("columns").push(json!({"name": "phone", "type": "string"}));
    let (code, v) = s.patch("/api/v1/datasets/gongan.residents", &steward, json!({"columns": columns})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    // Version 1's file has no phone: the record reads as the dataset is now.
    let (code, v) = s.get(&record(&format!("/{a}")), &steward).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!((&v["record"]["name"], &v["record"]["phone"]), (&json!("张三"), &Value::Null), "{v}");
    let csv =
        format!("id_number,name,birth_date,county_code,income,phone\n{b},李四,1990-01-01,441403,250,13812345678\n");
    let (code, v) = s
        .upload("/api/v1/datasets/gongan.residents/versions?mode=upsert", &steward, "text/csv", csv.into_bytes(), &[])
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    // One batch across a file with the column and one without.
    let (code, v) = s.post(&record(":batchGet"), &steward, json!({"keys": [b, a]})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let got: Vec<(Value, Value)> = v["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| (r["id_number"].clone(), r["phone"].clone()))
        .collect();
    assert_eq!(got, vec![(json!(b), json!("13812345678")), (json!(a), Value::Null)], "{v}");
    let (_, v) = s.get(&record(&format!("/{b}?as_of=1")), &steward).await;
    assert_eq!((&v["record"]["income"], &v["record"]["phone"]), (&json!("200.00"), &Value::Null), "{v}");
}
