//! gdx-tests: a harness that runs the real GDX server on `127.0.0.1:0` with
//! a temporary data directory and drives it over HTTP.

use std::path::{Path, PathBuf};

use gdx_exchange::{App, Config};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The administrator token every test server is started with.
pub const ADMIN: &str = "gdx_test_admin_token_0123456789";

/// A server under test.
#[derive(Debug)]
pub struct TestServer {
    app: Option<App>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
    /// The configuration it was started with, kept for restarts.
    config: Config,
}

/// The configuration of a test server over `data_dir`.
pub fn config(data_dir: &Path) -> Config {
    Config {
        data_dir: data_dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        admin_token: Some(ADMIN.to_string()),
        ..Config::default()
    }
}

/// An HTTPS client that trusts `ca` (and nothing else) and presents the
/// client certificate `NAME.pem` / `NAME.key` beside it, if given.
pub fn https_client(ca: &Path, client: Option<&str>) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("CA certificate");
    let mut builder =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA certificate PEM")]);
    if let Some(name) = client {
        let dir = ca.parent().expect("certificate directory");
        let mut pem = std::fs::read(dir.join(format!("{name}.pem"))).expect("client certificate");
        pem.extend(std::fs::read(dir.join(format!("{name}.key"))).expect("client key"));
        builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("client identity"));
    }
    builder.build().expect("HTTPS client")
}

impl TestServer {
    /// Starts a server on a new temporary data directory.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a server with a changed configuration.
    pub async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        gdx_exchange::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut c = config(&dir.path().join("data"));
        change(&mut c);
        let app = App::start(c.clone()).await.expect("server starts");
        Self { app: Some(app), dir, http: reqwest::Client::new(), config: c }
    }

    /// Starts a server that serves HTTPS with certificates from
    /// `gdx certs init` (in [`TestServer::certs`]), accepting client
    /// certificates of its CA; one client certificate per name in `clients`.
    pub async fn start_tls(clients: &[&str]) -> Self {
        gdx_exchange::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temporary directory");
        let certs = dir.path().join("certs");
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let clients: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
        gdx_exchange::certs::init(&certs, &names, &clients, false).expect("certificates");
        let mut c = config(&dir.path().join("data"));
        c.tls_cert = Some(certs.join("server.pem"));
        c.tls_key = Some(certs.join("server.key"));
        c.client_ca = Some(certs.join("ca.pem"));
        let app = App::start(c.clone()).await.expect("server starts");
        let http = https_client(&certs.join("ca.pem"), None);
        Self { app: Some(app), dir, http, config: c }
    }

    /// The HTTP client the helpers use.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Where [`TestServer::start_tls`] keeps its CA and certificates.
    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// Reads the TLS files again, as SIGHUP does; the error as text.
    pub fn reload_tls(&self) -> Result<bool, String> {
        self.app.as_ref().expect("server running").reload_tls().map_err(|e| e.to_string())
    }

    /// Sends a raw body with a content type (and optional extra headers) as `token`.
    pub async fn upload(
        &self,
        path: &str,
        token: &str,
        content_type: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .post(format!("{}{}", self.url(), path))
            .bearer_auth(token)
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory beside the data directory.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The server's base URL.
    pub fn url(&self) -> String {
        self.app.as_ref().expect("server running").url()
    }

    /// Stops the server and starts it again on the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let app = App::start(self.config.clone()).await.expect("server restarts");
        self.app = Some(app);
    }

    /// Stops the server, releasing the data directory.
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.expect("server stops");
        }
    }

    /// Starts the server on another data directory (e.g. a restored one).
    pub async fn start_on(&mut self, dir: &Path) {
        self.stop().await;
        self.config.data_dir = dir.to_path_buf();
        self.app = Some(App::start(self.config.clone()).await.expect("server starts"));
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.url(), path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body read");
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    /// GET as `token`.
    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    /// POST JSON as `token`.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// PATCH JSON as `token`.
    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body)).await
    }

    /// Creates a department as the administrator.
    pub async fn department(&self, id: &str, name: &str, region: &str) {
        let (s, v) = self.post("/api/v1/departments", ADMIN, json!({"id": id, "name": name, "region": region})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// Creates a principal as the administrator and returns its token.
    pub async fn principal(&self, id: &str, department: &str, roles: &[&str]) -> String {
        let (s, v) = self
            .post(
                "/api/v1/principals",
                ADMIN,
                json!({"id": id, "name": id, "department": department, "roles": roles, "kind": "user"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().expect("token shown once").to_string()
    }
}

/// The example population dataset of `department` (from API.md), with extra columns.
pub fn population(department: &str, name: &str, code: &str) -> Value {
    json!({
        "department": department, "name": name, "title": "户籍人口基础信息",
        "resource_code": code, "classification": "basic", "category": "人口",
        "description": "全市户籍人口的基础信息，含身份号码、姓名、出生日期和户籍地址。",
        "sharing": "unconditional", "update_cycle": "daily", "primary_key": ["id_number"],
        "columns": [
            {"name": "id_number", "type": "string", "nullable": false, "title": "公民身份号码",
             "sensitivity": "personal", "semantic": "id_card"},
            {"name": "name", "type": "string", "nullable": false, "title": "姓名",
             "sensitivity": "personal", "semantic": "person_name"},
            {"name": "birth_date", "type": "date", "title": "出生日期", "sensitivity": "personal"},
            {"name": "county_code", "type": "string", "title": "户籍所在县区", "sensitivity": "internal"},
            {"name": "income", "type": "decimal(12,2)", "title": "年收入", "sensitivity": "secret"}
        ]
    })
}

/// [`population`] shared on condition (a grant is needed to read it).
pub fn conditional_population(department: &str, name: &str, code: &str) -> Value {
    let mut d = population(department, name, code);
    d["sharing"] = json!("conditional");
    d["sharing_condition"] = json!("依法履职需要");
    d
}

/// A valid 18-digit resident ID number (GB 11643) for a region, birth date (`YYYYMMDD`) and sequence.
pub fn id_number(region: &str, born: &str, seq: u32) -> String {
    let body = format!("{region}{born}{:03}", seq % 1000);
    let check = gdx_connectors::parse::id_card_check(body.as_bytes()).expect("17 digits") as char;
    format!("{body}{check}")
}

/// Every row of a dataset at a Delta version, as sorted lines `v1|v2|...` (null as `∅`).
pub async fn lake_rows(data_dir: &Path, dataset: &Value, delta_version: u64) -> Vec<String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let d: gdx_catalog::Dataset = serde_json::from_value(dataset.clone()).expect("dataset json");
    let lake = gdx_catalog::lake::Lake::new(data_dir.join("lake"));
    let batches = lake.read(&d, delta_version).await.expect("lake read");
    let mut rows = Vec::new();
    for b in batches {
        let order: Vec<usize> = d.columns.iter().map(|c| b.schema().index_of(&c.name).expect("column")).collect();
        let opts = FormatOptions::default().with_null("∅");
        let fmts: Vec<_> =
            order.iter().map(|i| ArrayFormatter::try_new(b.column(*i).as_ref(), &opts).expect("fmt")).collect();
        for r in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    rows.sort();
    rows
}

/// The dataset's versions, newest first.
pub async fn versions(server: &TestServer, dataset: &str, token: &str) -> Vec<Value> {
    let (st, v) = server.get(&format!("/api/v1/datasets/{dataset}/versions"), token).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["items"].as_array().expect("items").clone()
}
