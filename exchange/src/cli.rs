//! The client commands of `gdx`: they talk to a server over HTTP.
//!
//! The server is found in `--url`/`GDX_URL` and the credential in
//! `--token`/`GDX_TOKEN`. Output is a human-readable table, or the server's
//! JSON with `--json`.

pub mod audit;
pub mod records;
pub mod rule;
pub mod work;

use std::path::Path;

use anyhow::{Context, bail};
use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

/// Writes a line to standard output; a closed pipe (`gdx ... | head`) ends the process quietly.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`emit`].
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::cli::emit(&format!($($t)*)) };
}

/// An HTTP client for one server and credential.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// How the client checks an HTTPS server and proves itself to it.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTls {
    /// CA certificate (PEM) the server's certificate must chain to, instead of the system's roots.
    #[arg(long, global = true, env = "GDX_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with --client-key.
    #[arg(long, global = true, env = "GDX_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "GDX_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
}

impl Client {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        Self::with_tls(base, token, &ClientTls::default())
    }

    /// A client of the server at `base` that trusts `tls.ca_cert` and, with a
    /// client certificate, authenticates by it where no token is given.
    pub fn with_tls(base: &str, token: Option<String>, tls: &ClientTls) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(path) = &tls.ca_cert {
            let pem = std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?;
            // As curl's --cacert: these roots, not the system's.
            builder = builder.tls_certs_only(
                reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", path.display()))?,
            );
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            let mut pem =
                std::fs::read(cert).with_context(|| format!("reading the client certificate {}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).with_context(|| format!("reading the client key {}", key.display()))?);
            let identity = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!("{} and {} are not a PEM certificate and key", cert.display(), key.display())
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self { http, base: base.trim_end_matches('/').to_string(), token })
    }

    /// Sends a request and returns the JSON answer (or `null` for `204`); a problem answer is an error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the GDX server at {}", self.base))?;
        self.answer(resp).await
    }

    /// Posts `body` to `path` asking for `accept`, and copies the answer to
    /// `out` as it arrives (a problem answer is an error, as for [`Client::call`]).
    pub async fn post_streamed(
        &self,
        path: &str,
        body: &Value,
        accept: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> anyhow::Result<()> {
        use futures::StreamExt;
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.post(&url).header("accept", accept).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the GDX server at {}", self.base))?;
        if !resp.status().is_success() {
            self.answer(resp).await?;
            anyhow::bail!("the server refused the request");
        }
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.context("reading the server's answer")?).context("writing the answer")?;
        }
        out.flush().context("writing the answer")?;
        Ok(())
    }

    /// The JSON of a response (or `null` for `204`); a problem answer is an error listing its problems.
    pub async fn answer(&self, resp: reqwest::Response) -> anyhow::Result<Value> {
        let status = resp.status();
        let text = resp.text().await.context("reading the server's answer")?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).context("the server's answer is not JSON");
        }
        let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let mut msg = format!(
            "{} ({}): {}",
            problem["title"].as_str().unwrap_or("request failed"),
            status.as_u16(),
            problem["detail"].as_str().unwrap_or(text.trim())
        );
        if let Some(errors) = problem["errors"].as_array() {
            for e in errors {
                let place = match (e["field"].as_str(), e["row"].as_u64(), e["column"].as_str()) {
                    (Some(f), _, _) => f.to_string(),
                    (None, Some(r), Some(c)) => format!("row {r}, column {c}"),
                    (None, Some(r), None) => format!("row {r}"),
                    (None, None, Some(c)) => format!("column {c}"),
                    (None, None, None) => "upload".to_string(),
                };
                msg.push_str(&format!("\n  - {place}: {}", e["message"].as_str().unwrap_or("")));
            }
            let count = problem["error_count"].as_u64().unwrap_or(errors.len() as u64);
            if count > errors.len() as u64 {
                msg.push_str(&format!("\n  ... {count} problems in all"));
            }
        }
        bail!(msg)
    }

    /// GET.
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.call(Method::GET, path, query, None).await
    }

    /// POST with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, &[], Some(body)).await
    }
}

/// Reads a dataset definition from a `.toml` or `.json` file into JSON.
pub fn read_definition(path: &Path) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "json" => serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display())),
        "toml" => {
            let v: toml::Value =
                toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
            Ok(toml_to_json(v))
        }
        _ => bail!("{}: expected a .toml or .json file", path.display()),
    }
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        // Dates (`published_on = 2024-01-02`) travel as their text.
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// Prints `value` as JSON, or as a table of `columns` (JSON field, header) of its `items`.
pub fn print_list(value: &Value, columns: &[(&str, &str)], as_json: bool) {
    if as_json {
        crate::out!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        return;
    }
    let empty = Vec::new();
    let items = value["items"].as_array().unwrap_or(&empty);
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(columns.iter().map(|(_, h)| *h));
    for item in items {
        table.add_row(columns.iter().map(|(f, _)| cell(&item[*f])));
    }
    crate::out!("{table}");
    if let Some(next) = value["next_page_token"].as_str() {
        crate::out!("(more: --page-token {next})");
    }
}

/// Prints a query answer as a table, with the versions read and whether rows were cut.
pub fn print_rows(value: &Value) {
    let empty = Vec::new();
    let columns = value["columns"].as_array().unwrap_or(&empty);
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(columns.iter().map(|c| c["name"].as_str().unwrap_or("").to_string()));
    let rows = value["rows"].as_array().unwrap_or(&empty);
    for row in rows {
        table.add_row(row.as_array().unwrap_or(&empty).iter().map(cell));
    }
    crate::out!("{table}");
    let versions: Vec<String> =
        value["versions"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k}@{v}")).collect()).unwrap_or_default();
    let cut = if value["truncated"].as_bool() == Some(true) { " (more rows were cut: --limit)" } else { "" };
    crate::out!(
        "{} row(s){cut}; read: {}",
        rows.len(),
        if versions.is_empty() { "-".into() } else { versions.join(", ") }
    );
}

/// Prints one object as JSON or as `field: value` lines.
pub fn print_object(value: &Value, as_json: bool) {
    if as_json {
        crate::out!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        return;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    if let Some(obj) = value.as_object() {
        for (k, v) in obj {
            if k == "columns" {
                continue;
            }
            table.add_row(vec![k.clone(), cell(v)]);
        }
    }
    crate::out!("{table}");
    if let Some(cols) = value["columns"].as_array() {
        crate::out!("columns:");
        print_list(
            &json!({ "items": cols }),
            &[
                ("name", "name"),
                ("type", "type"),
                ("nullable", "nullable"),
                ("title", "title"),
                ("sensitivity", "sensitivity"),
                ("semantic", "semantic"),
            ],
            false,
        );
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Streams `file` to the push endpoint, showing progress on standard error.
pub async fn push(
    client: &Client,
    dataset: &str,
    file: &Path,
    content_type: &str,
    query: &[(&str, String)],
    idempotency_key: Option<&str>,
) -> anyhow::Result<Value> {
    use std::io::IsTerminal;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let meta = tokio::fs::metadata(file).await.with_context(|| format!("reading {}", file.display()))?;
    let total = meta.len();
    let f = tokio::fs::File::open(file).await.with_context(|| format!("opening {}", file.display()))?;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).inspect(move |chunk| {
        if let Ok(c) = chunk {
            counter.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
    });
    let url = format!(
        "{}/api/v1/datasets/{}/versions",
        client.base,
        form_urlencoded::byte_serialize(dataset.as_bytes()).collect::<String>()
    );
    let mut req = client
        .http
        .post(&url)
        .query(query)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .header(reqwest::header::CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(stream))
        .timeout(std::time::Duration::from_secs(24 * 3600));
    if let Some(t) = &client.token {
        req = req.bearer_auth(t);
    }
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let started = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let progress = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(if tty { 250 } else { 2000 }));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = sent.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 && done < total {
                    format!("{:.0}s", (total - done) as f64 / rate)
                } else {
                    "-".into()
                };
                let line = format!(
                    "sent {:.1}/{:.1} MB ({:.0}%), {:.1} MB/s, ETA {eta}{}",
                    done as f64 / 1e6,
                    total as f64 / 1e6,
                    if total > 0 { done as f64 * 100.0 / total as f64 } else { 100.0 },
                    rate / 1e6,
                    if done >= total { " — server validating and committing" } else { "" }
                );
                if tty {
                    eprint!("\r{line}\x1b[K");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    };
    let resp = req.send().await;
    progress.abort();
    if tty {
        eprint!("\r\x1b[K");
    }
    let resp = resp.with_context(|| format!("cannot reach the GDX server at {}", client.base))?;
    let value = client.answer(resp).await?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    if let Some(rows) = value["rows_written"].as_i64() {
        eprintln!(
            "{rows} rows in {secs:.1}s ({:.0} rows/s, {:.1} MB/s)",
            rows as f64 / secs,
            total as f64 / 1e6 / secs
        );
    }
    Ok(value)
}
