//! sqllogictest files (`tests/slt/*.slt`) for governed SQL, run over HTTP
//! against a real server with several identities.
//!
//! A `connection <identity>` line switches the identity of every record
//! after it (until the next one): `provider` (a steward of gongan, which
//! provides the datasets), `analyst` (renshe, granted `gongan.residents`),
//! `county` (the Meixian county bureau, region 441403), `service` (minzheng),
//! `nogrant` (an analyst of jiaoyu, which holds no grant) and `admin`.
//! Query results are the JSON answer's values as text (`NULL` for null);
//! errors read `<code>: <message>`.
//!
//! The fixture (`fixture` below) is the same for every file: gongan.population
//! (unconditional; a county filter for meixian; birth dates `year_only` for
//! renshe), gongan.residents (conditional; granted to renshe: three columns,
//! the ID unmasked, county 441403 only), gongan.records (sharing type none)
//! and renshe.pension (unconditional, for joins across departments).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gdx_tests::{ADMIN, TestServer, id_number, population};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Record};

#[derive(Debug)]
struct QueryError(String);

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QueryError {}

/// One sqllogictest connection: queries as whichever identity is current.
struct Gdx {
    url: String,
    tokens: Arc<HashMap<String, String>>,
    identity: Arc<Mutex<String>>,
    http: reqwest::Client,
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[async_trait::async_trait]
impl AsyncDB for Gdx {
    type Error = QueryError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, QueryError> {
        let identity = self.identity.lock().expect("identity").clone();
        let token = self.tokens.get(&identity).ok_or_else(|| QueryError(format!("no identity {identity}")))?;
        let resp = self
            .http
            .post(format!("{}/api/v1/query", self.url))
            .bearer_auth(token)
            .json(&json!({"sql": sql}))
            .send()
            .await
            .map_err(|e| QueryError(format!("transport: {e}")))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| QueryError(format!("body: {e}")))?;
        if status != StatusCode::OK {
            let code = body["code"].as_str().unwrap_or("?");
            let detail = body["detail"].as_str().or(body["title"].as_str()).unwrap_or("");
            return Err(QueryError(format!("{code}: {detail}")));
        }
        let columns = body["columns"].as_array().map(Vec::len).unwrap_or(0);
        let rows: Vec<Vec<String>> = body["rows"]
            .as_array()
            .map(|rs| {
                rs.iter().map(|r| r.as_array().map(|r| r.iter().map(text).collect()).unwrap_or_default()).collect()
            })
            .unwrap_or_default();
        Ok(DBOutput::Rows { types: vec![DefaultColumnType::Any; columns], rows })
    }

    async fn shutdown(&mut self) {}

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn upload_csv(s: &TestServer, dataset: &str, token: &str, csv: String) -> impl std::future::Future<Output = ()> {
    let path = format!("/api/v1/datasets/{dataset}/versions");
    async move {
        let (code, v) = s.upload(&path, token, "text/csv", csv.into_bytes(), &[]).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
    }
}

/// The datasets, policies, grant and identities every file runs against.
async fn fixture(s: &TestServer) -> HashMap<String, String> {
    for (id, name, region) in [
        ("gongan", "梅州市公安局", "441400"),
        ("renshe", "梅州市人社局", "441400"),
        ("meixian", "梅县区人社局", "441403"),
        ("minzheng", "梅州市民政局", "441400"),
        ("jiaoyu", "梅州市教育局", "441400"),
    ] {
        s.department(id, name, region).await;
    }
    let mut tokens = HashMap::new();
    for (identity, department, role) in [
        ("provider", "gongan", "steward"),
        ("renshe_steward", "renshe", "steward"),
        ("analyst", "renshe", "analyst"),
        ("county", "meixian", "analyst"),
        ("service", "minzheng", "service"),
        ("nogrant", "jiaoyu", "analyst"),
    ] {
        tokens.insert(identity.to_string(), s.principal(identity, department, &[role]).await);
    }
    tokens.insert("admin".into(), ADMIN.into());
    let provider = tokens["provider"].clone();
    let people = [
        (id_number("441402", "19800517", 1), "张三", "1980-05-17", "441402", "100"),
        (id_number("441403", "19901102", 2), "李四", "1990-11-02", "441403", "200"),
        (id_number("441403", "19700309", 3), "王五", "1970-03-09", "441403", "300"),
        (id_number("441422", "20001231", 4), "欧阳娜娜", "2000-12-31", "441422", "400"),
    ];
    let csv = |n: usize| {
        let mut out = "id_number,name,birth_date,county_code,income\n".to_string();
        for (id, name, born, county, income) in people.iter().take(n) {
            out.push_str(&format!("{id},{name},{born},{county},{income}\n"));
        }
        out
    };
    for (name, code, sharing, rows) in [
        ("population", "1-01", "unconditional", 4),
        ("residents", "1-02", "conditional", 3),
        ("records", "1-03", "none", 2),
    ] {
        let mut d = population("gongan", name, code);
        d["sharing"] = json!(sharing);
        d["sharing_condition"] = if sharing == "conditional" { json!("依法履职需要") } else { Value::Null };
        let (code, v) = s.post("/api/v1/datasets", &provider, d).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        upload_csv(s, &format!("gongan.{name}"), &provider, csv(rows)).await;
    }
    let policy = json!({
        "masks": [{"column": "birth_date", "mask": "year_only", "for": "renshe"}],
        "row_filters": [{"for": "meixian", "filter": "county_code = {{department.region}}"}]
    });
    let (code, v) =
        s.call(Method::PUT, "/api/v1/datasets/gongan.population/policy", Some(&provider), Some(policy)).await;
    assert_eq!(code, StatusCode::OK, "{v}");

    let pension = json!({
        "department": "renshe", "name": "pension", "title": "养老保险待遇发放", "resource_code": "2-01",
        "classification": "department", "sharing": "unconditional", "update_cycle": "monthly",
        "primary_key": ["id_number"],
        "columns": [
            {"name": "id_number", "type": "string", "nullable": false, "sensitivity": "personal", "semantic": "id_card"},
            {"name": "amount", "type": "decimal(12,2)", "sensitivity": "internal"}
        ]
    });
    let steward = tokens["renshe_steward"].clone();
    let (code, v) = s.post("/api/v1/datasets", &steward, pension).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let csv = format!("id_number,amount\n{},1500\n{},2500\n", people[0].0, people[2].0);
    upload_csv(s, "renshe.pension", &steward, csv).await;

    // The grant, as an approved sharing request leaves it in the metadata store.
    use gdx_catalog::MetaStore;
    let store = gdx_catalog::SqliteStore::open(&s.data_dir().join("meta.db")).expect("store");
    let grant = gdx_catalog::Grant {
        id: "gr_residents".into(),
        dataset: "gongan.residents".into(),
        department: "renshe".into(),
        columns: Some(vec!["id_number".into(), "name".into(), "county_code".into()]),
        unmask: vec!["id_number".into()],
        row_filter: Some("county_code = '441403'".into()),
        expires_at: None,
        rows_per_day: None,
        revoked_at: None,
        request: None,
        created_by: "provider".into(),
        created_at: chrono::Utc::now(),
    };
    store.create_grant(grant).await.expect("grant");
    let start = std::time::Instant::now();
    loop {
        let (code, _) =
            s.post("/api/v1/query", &tokens["analyst"], json!({"sql": "SELECT 1 FROM gongan.residents"})).await;
        if code == StatusCode::OK {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "the grant took effect");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokens
}

#[tokio::test]
async fn sqllogictest_files() {
    let s = TestServer::start().await;
    let tokens = Arc::new(fixture(&s).await);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/slt")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "the sqllogictest files are there: {files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let identity = Arc::new(Mutex::new("provider".to_string()));
        let (url, tokens2, identity2) = (s.url(), tokens.clone(), identity.clone());
        let mut runner = sqllogictest::Runner::new(move || {
            let db = Gdx {
                url: url.clone(),
                tokens: tokens2.clone(),
                identity: identity2.clone(),
                http: reqwest::Client::new(),
            };
            async move { Ok::<_, QueryError>(db) }
        });
        let records = sqllogictest::parse_file::<DefaultColumnType>(file).expect("parses");
        for record in records {
            if let Record::Connection(sqllogictest::Connection::Named(name)) = &record {
                assert!(tokens.contains_key(name), "{}: unknown identity {name}", file.display());
                *identity.lock().expect("identity") = name.clone();
                continue;
            }
            if let Err(e) = runner.run_async(record).await {
                failures.push(format!("{}", e.display(true)));
            }
        }
    }
    assert!(failures.is_empty(), "{} failing records:\n{}", failures.len(), failures.join("\n\n"));
}
