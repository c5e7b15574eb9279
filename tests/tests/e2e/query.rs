//! Governed SQL over HTTP: every identity sees what the rules allow, whatever it writes.

use gdx_tests::{ADMIN, TestServer, conditional_population, id_number, population};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn q(s: &TestServer, token: &str, sql: &str) -> (StatusCode, Value) {
    s.post("/api/v1/query", token, json!({"sql": sql})).await
}

fn rows(v: &Value) -> Vec<Vec<Value>> {
    v["rows"].as_array().expect("rows").iter().map(|r| r.as_array().expect("row").clone()).collect()
}

#[tokio::test]
async fn each_identity_reads_what_the_rules_allow() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    s.department("meixian", "梅县区人社局", "441403").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let county = s.principal("cn", "meixian", &["analyst"]).await;
    for (name, code, sharing) in [("population", "1-01", "unconditional"), ("residents", "1-02", "conditional")] {
        let mut d = population("gongan", name, code);
        d["sharing"] = json!(sharing);
        d["sharing_condition"] = if sharing == "conditional" { json!("依法履职需要") } else { Value::Null };
        let (code, v) = s.post("/api/v1/datasets", &steward, d).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        let (a, b, c) = (
            id_number("441402", "19800101", 1),
            id_number("441403", "19900101", 2),
            id_number("441403", "19700101", 3),
        );
        let csv = format!(
            "id_number,name,birth_date,county_code,income\n{a},张三,1980-01-01,441402,100\n{b},李四,1990-01-01,441403,200\n{c},王五,1970-01-01,441403,300\n"
        );
        let (code, v) = s
            .upload(&format!("/api/v1/datasets/gongan.{name}/versions"), &steward, "text/csv", csv.into_bytes(), &[])
            .await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
    }
    let policy = json!({"row_filters": [{"for": "meixian", "filter": "county_code = {{department.region}}"}]});
    let (code, v) =
        s.call(Method::PUT, "/api/v1/datasets/gongan.population/policy", Some(&steward), Some(policy)).await;
    assert_eq!(code, StatusCode::OK, "{v}");

    // The provider's steward: everything, in clear.
    let (code, v) = q(&s, &steward, "SELECT name, income FROM gongan.population ORDER BY income").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(
        rows(&v),
        vec![
            vec![json!("张三"), json!("100.00")],
            vec![json!("李四"), json!("200.00")],
            vec![json!("王五"), json!("300.00")]
        ]
    );
    assert_eq!(v["versions"], json!({"gongan.population": 1}), "what was read, not all that could be");

    // Another department's analyst: personal columns masked, the secret one absent.
    let (code, v) = q(&s, &analyst, "SELECT * FROM gongan.population ORDER BY county_code, birth_date").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let names: Vec<&str> =
        v["columns"].as_array().expect("columns").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, vec!["id_number", "name", "birth_date", "county_code"]);
    let r = rows(&v);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0][0].as_str().map(str::len), Some(64), "hashed ID: {v}");
    assert_eq!(r[0][1], "张*");
    assert_eq!(r[0][2], "nnnn-nn-nn");
    assert_eq!(r[0][3], "441402");
    let (code, v) = q(&s, &analyst, "SELECT income FROM gongan.population").await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")), "{v}");
    // Hashed IDs are stable: they join and group like the clear ones.
    let (_, v) = q(&s, &analyst, "SELECT count(DISTINCT id_number) FROM gongan.population").await;
    assert_eq!(rows(&v), vec![vec![json!(3)]]);

    // The county bureau: its county only, whatever the predicate.
    for sql in [
        "SELECT count(*) FROM gongan.population",
        "SELECT count(*) FROM gongan.population WHERE county_code = '441402' OR 1 = 1",
        "SELECT count(*) FROM gongan.population WHERE CASE WHEN county_code = '441402' THEN CAST(name AS INT) ELSE 1 END = 1",
        "SELECT count(*) FROM gongan.population a JOIN gongan.population b ON a.id_number = b.id_number",
    ] {
        let (code, v) = q(&s, &county, sql).await;
        assert_eq!(code, StatusCode::OK, "{sql}: {v}");
        assert_eq!(rows(&v), vec![vec![json!(2)]], "{sql}");
    }
    // A leakproof predicate may prune beneath the governed scan, but never widens it.
    for (sql, n) in [
        ("SELECT count(*) FROM gongan.population WHERE county_code = '441402'", 0),
        ("SELECT count(*) FROM gongan.population WHERE county_code IN ('441402', '441403')", 2),
        (
            "SELECT count(*) FROM gongan.population WHERE county_code BETWEEN '441400' AND '441499' AND county_code IS NOT NULL",
            2,
        ),
    ] {
        let (code, v) = q(&s, &county, sql).await;
        assert_eq!(code, StatusCode::OK, "{sql}: {v}");
        assert_eq!(rows(&v), vec![vec![json!(n)]], "{sql}");
    }
    let (code, v) = q(&s, &analyst, "SELECT count(*) FROM gongan.population WHERE county_code = '441403'").await;
    assert_eq!((code, rows(&v)), (StatusCode::OK, vec![vec![json!(2)]]), "{v}");
    let (code, v) = q(&s, &county, "EXPLAIN SELECT * FROM gongan.population").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let plan = v.to_string();
    assert!(plan.contains("GovernedScan: gongan.population"), "{plan}");
    assert!(!plan.contains("441403") && !plan.contains("county_code =") && !plan.contains(".parquet"), "{plan}");

    // A conditional dataset without a grant is absent, exactly like a missing one.
    let (code, a) = q(&s, &analyst, "SELECT * FROM gongan.residents").await;
    let (_, b) = q(&s, &analyst, "SELECT * FROM gongan.nothing").await;
    assert_eq!(
        (code, a["code"].as_str(), b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("table_not_found"), Some("table_not_found")),
        "{a} {b}"
    );
    let (_, v) =
        q(&s, &analyst, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'gongan'").await;
    assert_eq!(rows(&v), vec![vec![json!("population")]], "{v}");
    let (code, v) = q(&s, &analyst, "SHOW TABLES").await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let listed: Vec<String> =
        rows(&v).iter().map(|r| format!("{}.{}", r[1].as_str().unwrap_or(""), r[2].as_str().unwrap_or(""))).collect();
    assert!(
        listed.contains(&"gongan.population".to_string()) && !listed.iter().any(|t| t.contains("residents")),
        "{listed:?}"
    );
    let (_, v) = q(&s, &steward, "SELECT count(*) FROM gongan.residents").await;
    assert_eq!(rows(&v), vec![vec![json!(3)]], "the provider reads its own");

    // Statements other than queries, files and URLs: refused before anything runs.
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/gdx-out.csv'",
        "INSERT INTO gongan.population VALUES ('x')",
        "SET datafusion.execution.batch_size = 1",
        "DROP TABLE gongan.population",
        "SELECT 1; SELECT 2",
    ] {
        let (code, v) = q(&s, &analyst, sql).await;
        assert_eq!((code, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("sql_not_allowed")), "{sql}: {v}");
    }
    assert!(!std::path::Path::new("/tmp/gdx-out.csv").exists());
    let (code, v) = q(&s, &analyst, "SELECT * FROM '/etc/passwd'").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{v}");
    assert!(!v.to_string().contains("root:"), "{v}");
    let (code, v) = q(&s, &analyst, "SELEC 1").await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")), "{v}");

    // Time travel keeps the row filter: a new version, and the county bureau
    // reading the first one still sees its county only.
    let csv = format!(
        "id_number,name,birth_date,county_code,income\n{},赵六,1985-01-01,441402,400\n",
        id_number("441402", "19850101", 4)
    );
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.population/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    for (version, all) in [(1, 3), (2, 4)] {
        let body = json!({"sql": "SELECT count(*) FROM gongan.population", "as_of": {"gongan.population": version}});
        let (code, v) = s.post("/api/v1/query", &county, body.clone()).await;
        assert_eq!((code, rows(&v)), (StatusCode::OK, vec![vec![json!(2)]]), "version {version}: {v}");
        let (_, v) = s.post("/api/v1/query", &steward, body).await;
        assert_eq!(rows(&v), vec![vec![json!(all)]], "version {version} in full");
    }

    // The steward previews its dataset as the county bureau sees it; others cannot.
    let (code, v) = s
        .post(
            "/api/v1/query?as_department=meixian",
            &steward,
            json!({"sql": "SELECT name FROM gongan.population ORDER BY name"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(rows(&v), vec![vec![json!("李*")], vec![json!("王*")]], "{v}");
    let (code, v) = s.post("/api/v1/query?as_department=meixian", &analyst, json!({"sql": "SELECT 1"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (code, _) = s.post("/api/v1/query?as_department=nowhere", &steward, json!({"sql": "SELECT 1"})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);

    // Administrators read no data by virtue of their role.
    assert_eq!(q(&s, ADMIN, "SELECT 1").await.0, StatusCode::FORBIDDEN);
}

// Two workers: a query that never gave its worker back would still let the
// test's own deadlines fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_versions_and_memory() {
    let s = TestServer::start_with(|c| {
        c.query_memory_bytes = 4 * 1024 * 1024;
        c.query_max_rows = 2;
        c.query_timeout_secs = 3;
    })
    .await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let (code, v) = s.post("/api/v1/datasets", &steward, population("gongan", "population", "1-01")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let path = "/api/v1/datasets/gongan.population/versions";
    for (i, mode) in [(1, "append"), (2, "append")] {
        let csv = format!("id_number,name,county_code\n{},张三,441402\n", id_number("441402", "19800101", i));
        let (code, v) = s.upload(&format!("{path}?mode={mode}"), &steward, "text/csv", csv.into_bytes(), &[]).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
    }
    // The latest version, a pinned older one, and an unknown one.
    let (_, v) = q(&s, &steward, "SELECT count(*) FROM gongan.population").await;
    assert_eq!((rows(&v), v["versions"]["gongan.population"].clone()), (vec![vec![json!(2)]], json!(2)));
    let (code, v) = s
        .post(
            "/api/v1/query",
            &steward,
            json!({"sql": "SELECT count(*) FROM gongan.population", "as_of": {"gongan.population": 1}}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!((rows(&v), v["versions"]["gongan.population"].clone()), (vec![vec![json!(1)]], json!(1)));
    let (code, v) =
        s.post("/api/v1/query", &steward, json!({"sql": "SELECT 1", "as_of": {"gongan.population": 9}})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // The row cap.
    let (_, v) = q(&s, &steward, "SELECT * FROM generate_series(1, 10)").await;
    assert_eq!((rows(&v).len(), v["truncated"].clone()), (2, json!(true)));

    // A query past its memory fails cleanly, and the server keeps serving.
    let (code, v) = q(&s, &steward, "SELECT a.value FROM generate_series(1, 3000000) a ORDER BY a.value DESC").await;
    assert_eq!((code, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("resources_exhausted")), "{v}");
    assert_eq!(q(&s, &steward, "SELECT 1").await.0, StatusCode::OK);
    // A cross join of 9·10¹² pairs streams within the memory limit; it runs
    // until its time is up, then stops; meanwhile the server keeps answering.
    let sql = "SELECT count(*) FROM generate_series(1, 3000000) a CROSS JOIN generate_series(1, 3000000) b";
    let long = q(&s, &steward, sql);
    tokio::pin!(long);
    let health = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        s.call(Method::GET, "/healthz", None, None).await.0
    };
    tokio::select! {
        (code, v) = &mut long => panic!("the cross join ended first: {code} {v}"),
        code = health => assert_eq!(code, StatusCode::OK),
    }
    let (code, v) = tokio::time::timeout(std::time::Duration::from_secs(30), long)
        .await
        .expect("the cross join is stopped at its deadline (3 s), not long after");
    assert_eq!((code, v["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")), "{v}");
    assert_eq!(q(&s, &steward, "SELECT 1").await.0, StatusCode::OK);
    let spill = s.data_dir().join("tmp/query-spill");
    assert_eq!(std::fs::read_dir(&spill).map(|d| d.count()).unwrap_or(0), 0, "no spill file outlives its query");
}

#[tokio::test]
async fn answers_in_csv_arrow_and_parquet_by_accept() {
    let s = TestServer::start_with(|c| c.query_max_rows = 1000).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let sql = json!({"sql": "SELECT value AS n, 'x' || CAST(value AS VARCHAR) AS label FROM generate_series(1, 1500) ORDER BY value"});
    let ask = |accept: &'static str| {
        let (url, steward, sql) = (format!("{}/api/v1/query", s.url()), steward.clone(), sql.clone());
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(steward)
                .header("accept", accept)
                .json(&sql)
                .send()
                .await
                .expect("sent");
            let status = resp.status();
            let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (status, ctype, resp.bytes().await.expect("body").to_vec())
        }
    };
    let (code, ctype, body) = ask("text/csv").await;
    assert_eq!((code, ctype.as_str()), (StatusCode::OK, "text/csv; charset=utf-8"));
    let text = String::from_utf8(body).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        (lines.len(), lines[0], lines[1], lines[1000]),
        (1001, "n,label", "1,x1", "1000,x1000"),
        "the row cap holds"
    );

    let (code, _, body) = ask("application/vnd.apache.arrow.stream").await;
    assert_eq!(code, StatusCode::OK);
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).expect("arrow stream");
    let n: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(n, 1000);

    let (code, _, body) = ask("application/vnd.apache.parquet").await;
    assert_eq!(code, StatusCode::OK);
    let file = s.scratch().join("answer.parquet");
    std::fs::write(&file, body).expect("write");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&file).expect("open"),
    )
    .expect("parquet")
    .build()
    .expect("reader");
    let n: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(n, 1000);

    let (code, ctype, _) = ask("application/xml").await;
    assert_eq!((code, ctype.as_str()), (StatusCode::NOT_ACCEPTABLE, "application/problem+json"));
    let (code, ctype, _) = ask("text/html, */*;q=0.8").await;
    assert_eq!((code, ctype.as_str()), (StatusCode::OK, "application/json"));
}

/// Waits up to `within` for the query to answer `want` (status and error code
/// or row count), polling; the time it took.
async fn until(s: &TestServer, token: &str, sql: &str, want: &str, within: std::time::Duration) -> std::time::Duration {
    let start = std::time::Instant::now();
    loop {
        let (code, v) = q(s, token, sql).await;
        let got = if code == StatusCode::OK { format!("rows {}", rows(&v).len()) } else { v["code"].to_string() };
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{sql}: still {got} ({v}) after {within:?}, wanted {want}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn grants_written_elsewhere_take_effect_within_a_second_and_end_on_time() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let d = conditional_population("gongan", "residents", "1-02");
    let (code, v) = s.post("/api/v1/datasets", &steward, d).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (a, b) = (id_number("441402", "19800101", 1), id_number("441403", "19900101", 2));
    let csv = format!("id_number,name,county_code,income\n{a},张三,441402,100\n{b},李四,441403,200\n");
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions", &steward, "text/csv", csv.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let sql = "SELECT * FROM gongan.residents";
    let (_, v) = q(&s, &analyst, sql).await;
    assert_eq!(v["code"], "table_not_found", "{v}");

    // Another process (here: another connection to the metadata database)
    // grants the dataset, narrowed: two columns, the ID in clear, one county,
    // for a few seconds.
    let store = gdx_catalog::SqliteStore::open(&s.data_dir().join("meta.db")).expect("store");
    use gdx_catalog::MetaStore;
    let ends = chrono::Utc::now() + chrono::Duration::seconds(4);
    let grant = gdx_catalog::Grant {
        id: "gr_1".into(),
        dataset: "gongan.residents".into(),
        department: "renshe".into(),
        columns: Some(vec!["id_number".into(), "name".into()]),
        unmask: vec!["id_number".into()],
        row_filter: Some("county_code = '441402'".into()),
        expires_at: Some(ends),
        rows_per_day: None,
        revoked_at: None,
        request: None,
        created_by: "st".into(),
        created_at: chrono::Utc::now(),
    };
    store.create_grant(grant).await.expect("grant");
    let took = until(&s, &analyst, sql, "rows 1", std::time::Duration::from_secs(2)).await;
    assert!(took < std::time::Duration::from_millis(1500), "took {took:?}");
    let (code, v) = q(&s, &analyst, sql).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let names: Vec<&str> =
        v["columns"].as_array().expect("columns").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, vec!["id_number", "name"], "only the granted columns");
    assert_eq!(rows(&v), vec![vec![json!(a), json!("张*")]], "the ID unmasked, the name still masked, one county");
    let (_, v) = q(&s, &analyst, "SELECT income FROM gongan.residents").await;
    assert_eq!(v["code"], "invalid_query", "{v}");

    // At its end the grant stops at once: the dataset leaves the session.
    let wait = (ends - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(50)).await;
    let (_, v) = q(&s, &analyst, sql).await;
    assert_eq!(v["code"], "table_not_found", "a grant that ended a moment ago: {v}");

    // Revocation through the store likewise ends a grant within a second.
    let grant = gdx_catalog::Grant {
        id: "gr_2".into(),
        expires_at: None,
        columns: None,
        created_at: chrono::Utc::now(),
        ..store.grant("gr_1").await.expect("grant")
    };
    store.create_grant(grant).await.expect("grant");
    until(&s, &analyst, sql, "rows 1", std::time::Duration::from_secs(2)).await;
    let (_, v) = s.get("/api/v1/datasets/gongan.residents", &analyst).await;
    assert_eq!(v["access"], "read", "{v}");
    store.revoke_grant("gr_2", chrono::Utc::now()).await.expect("revoke");
    let took = until(&s, &analyst, sql, "\"table_not_found\"", std::time::Duration::from_secs(2)).await;
    assert!(took < std::time::Duration::from_millis(1500), "took {took:?}");

    // The grants API: the consumer and the provider see them, others do not;
    // only the provider's stewards revoke, and that ends the grant at once.
    let grant = gdx_catalog::Grant { id: "gr_3".into(), ..store.grant("gr_2").await.expect("grant") };
    let grant = gdx_catalog::Grant { revoked_at: None, created_at: chrono::Utc::now(), ..grant };
    store.create_grant(grant).await.expect("grant");
    until(&s, &analyst, sql, "rows 1", std::time::Duration::from_secs(2)).await;
    let other = s.principal("ot", "renshe", &["steward"]).await;
    s.department("minzheng", "梅州市民政局", "441400").await;
    let stranger = s.principal("mz", "minzheng", &["analyst"]).await;
    let ids = |v: &Value| -> Vec<String> {
        v.as_array().expect("list").iter().filter_map(|g| g["id"].as_str().map(String::from)).collect()
    };
    let (code, v) = s.get("/api/v1/grants?dataset=gongan.residents", &analyst).await;
    assert_eq!((code, ids(&v)), (StatusCode::OK, vec!["gr_3".to_string(), "gr_2".into(), "gr_1".into()]), "{v}");
    assert_eq!(ids(&s.get("/api/v1/grants", &steward).await.1).len(), 3);
    assert_eq!(ids(&s.get("/api/v1/grants", &stranger).await.1), Vec::<String>::new());
    assert_eq!(s.call(Method::DELETE, "/api/v1/grants/gr_3", Some(&analyst), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.call(Method::DELETE, "/api/v1/grants/gr_3", Some(&other), None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.call(Method::DELETE, "/api/v1/grants/gr_9", Some(&steward), None).await.0, StatusCode::NOT_FOUND);
    let (code, _) = s.call(Method::DELETE, "/api/v1/grants/gr_3", Some(&steward), None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (_, v) = q(&s, &analyst, sql).await;
    assert_eq!(v["code"], "table_not_found", "revoked through the API: at once, {v}");
    let (_, v) = s.get("/api/v1/grants?department=renshe", &steward).await;
    assert!(v[0]["revoked_at"].is_string(), "{v}");
    assert_eq!(s.call(Method::DELETE, "/api/v1/grants/gr_3", Some(ADMIN), None).await.0, StatusCode::NO_CONTENT);
    let (_, v) = s.get("/api/v1/datasets/gongan.residents", &analyst).await;
    assert_eq!(v["access"], "requestable", "{v}");
}

#[tokio::test]
async fn long_json_answers_stream_and_stay_well_formed() {
    let s = TestServer::start_with(|c| c.query_max_rows = 10_000).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    // Short answers are built whole; longer ones stream (in batches of 8192
    // rows here), and the cap cuts the second batch.
    for (n, want, truncated) in [(500, 500, false), (3000, 3000, false), (9000, 9000, false), (20_000, 10_000, true)] {
        let sql = format!(
            "SELECT value AS n, 'x' || CAST(value AS VARCHAR) AS label FROM generate_series(1, {n}) ORDER BY value"
        );
        let (code, v) = q(&s, &steward, &sql).await;
        assert_eq!(code, StatusCode::OK, "{n}: {v}");
        let r = rows(&v);
        assert_eq!((r.len(), v["truncated"].as_bool()), (want, Some(truncated)), "{n}");
        assert_eq!(
            (r[0].clone(), r[want - 1].clone()),
            (vec![json!(1), json!("x1")], vec![json!(want), json!(format!("x{want}"))])
        );
        assert_eq!(v["columns"][1]["name"], "label", "{n}");
        assert_eq!(v["versions"], json!({}), "{n}");
    }
}
