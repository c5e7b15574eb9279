//! Governance overhead: analytical queries through the governed path (a real
//! server on loopback, `POST /api/v1/query`, Arrow IPC answers) against plain
//! DataFusion running the same queries with the same masks and row filters
//! written out by hand (the same mask functions as UDFs, the filter in a
//! subquery), on the same Delta tables, paired and interleaved.
//!
//! `scripts/bench-query.sh` runs it and DuckDB on the same files; by hand:
//!
//!     cargo bench --workspace --bench governance -- --rows 10000000 --runs 5 --out /tmp/q.json
//!
//! Readers: an analyst of a third department (minzheng: masks, and a grant of
//! the conditional pension register with the amount unmasked) and the Meixian
//! county bureau (the population register's row filter). Every answer of the
//! governed path must equal the hand-written one, or the run fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use gdx_exchange::datagen::{self, Kind, OutputFormat, Params};
use gdx_policies::{HashKey, Mask};
use serde_json::{Value, json};

const ADMIN: &str = "gdx_bench_admin_token_0123456789";

struct Query {
    name: &'static str,
    reader: &'static str,
    governed: &'static str,
    /// The same query over `pop` and `pen`, the views written out by hand below.
    hand: &'static str,
}

/// The population register as minzheng sees it, written out by hand.
const POP_MINZHENG: &str = "(SELECT m_hash(id_number) AS id_number, m_person_name(name) AS name, gender, \
     m_year_only(birth_date) AS birth_date, county_code, m_redact(address) AS address, m_phone(phone) AS phone \
     FROM population)";
/// The population register as the Meixian county bureau sees it.
const POP_MEIXIAN: &str = "(SELECT m_hash(id_number) AS id_number, m_person_name(name) AS name, gender, \
     m_year_only(birth_date) AS birth_date, county_code, m_redact(address) AS address, m_phone(phone) AS phone \
     FROM population WHERE county_code = '441403')";
/// The pension register under minzheng's grant (amount unmasked).
const PEN_MINZHENG: &str = "(SELECT m_hash(id_number) AS id_number, monthly_amount, started_on, status FROM pensions)";

fn queries() -> Vec<Query> {
    vec![
        Query {
            name: "count",
            reader: "minzheng",
            governed: "SELECT count(*) FROM gongan.population",
            hand: "SELECT count(*) FROM {pop} p",
        },
        Query {
            name: "group by county",
            reader: "minzheng",
            governed: "SELECT county_code, count(*) FROM gongan.population GROUP BY 1 ORDER BY 1",
            hand: "SELECT county_code, count(*) FROM {pop} p GROUP BY 1 ORDER BY 1",
        },
        Query {
            name: "filter on a clear column",
            reader: "minzheng",
            governed: "SELECT gender, count(*) FROM gongan.population WHERE county_code = '441402' GROUP BY 1 ORDER BY 1",
            hand: "SELECT gender, count(*) FROM {pop} p WHERE county_code = '441402' GROUP BY 1 ORDER BY 1",
        },
        Query {
            name: "group by masked year",
            reader: "minzheng",
            governed: "SELECT date_part('year', birth_date) AS y, count(*) FROM gongan.population GROUP BY 1 ORDER BY 1",
            hand: "SELECT date_part('year', birth_date) AS y, count(*) FROM {pop} p GROUP BY 1 ORDER BY 1",
        },
        Query {
            name: "top-k of masked names",
            reader: "minzheng",
            governed: "SELECT name, birth_date, phone FROM gongan.population WHERE county_code = '441424' \
                       ORDER BY birth_date DESC, phone LIMIT 10",
            hand: "SELECT name, birth_date, phone FROM {pop} p WHERE county_code = '441424' \
                   ORDER BY birth_date DESC, phone LIMIT 10",
        },
        Query {
            name: "surnames (masked text)",
            reader: "minzheng",
            governed: "SELECT substr(name, 1, 1) AS surname, count(*) FROM gongan.population GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
            hand: "SELECT substr(name, 1, 1) AS surname, count(*) FROM {pop} p GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
        },
        Query {
            name: "distinct hashed IDs, one county",
            reader: "minzheng",
            governed: "SELECT count(DISTINCT id_number) FROM gongan.population WHERE county_code = '441426'",
            hand: "SELECT count(DISTINCT id_number) FROM {pop} p WHERE county_code = '441426'",
        },
        Query {
            name: "join of two departments",
            reader: "minzheng",
            governed: "SELECT p.county_code, count(*), sum(s.monthly_amount) FROM gongan.population p \
                       JOIN renshe.pensions s ON p.id_number = s.id_number WHERE p.county_code = '441427' \
                       GROUP BY 1 ORDER BY 1",
            hand: "SELECT p.county_code, count(*), sum(s.monthly_amount) FROM {pop} p \
                   JOIN {pen} s ON p.id_number = s.id_number WHERE p.county_code = '441427' \
                   GROUP BY 1 ORDER BY 1",
        },
        Query {
            name: "window",
            reader: "minzheng",
            governed: "SELECT county_code, gender, n, rank() OVER (PARTITION BY county_code ORDER BY n DESC) AS r \
                       FROM (SELECT county_code, gender, count(*) AS n FROM gongan.population GROUP BY 1, 2) \
                       ORDER BY 1, 4, 2",
            hand: "SELECT county_code, gender, n, rank() OVER (PARTITION BY county_code ORDER BY n DESC) AS r \
                   FROM (SELECT county_code, gender, count(*) AS n FROM {pop} p GROUP BY 1, 2) \
                   ORDER BY 1, 4, 2",
        },
        Query {
            name: "row filter (county bureau)",
            reader: "meixian",
            governed: "SELECT gender, count(*), min(birth_date) FROM gongan.population GROUP BY 1 ORDER BY 1",
            hand: "SELECT gender, count(*), min(birth_date) FROM {pop} p GROUP BY 1 ORDER BY 1",
        },
        Query {
            name: "masked phone prefix",
            reader: "meixian",
            governed: "SELECT count(*) FROM gongan.population WHERE phone LIKE '138%'",
            hand: "SELECT count(*) FROM {pop} p WHERE phone LIKE '138%'",
        },
    ]
}

struct Args {
    rows: u64,
    runs: usize,
    out: Option<PathBuf>,
    dir: Option<PathBuf>,
    /// Also time each query with the page cache dropped before each run.
    cold: bool,
}

fn args() -> Args {
    let mut a = Args { rows: 10_000_000, runs: 5, out: None, dir: None, cold: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rows" => a.rows = it.next().and_then(|v| v.parse().ok()).expect("--rows N"),
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--out" => a.out = it.next().map(PathBuf::from),
            "--dir" => a.dir = it.next().map(PathBuf::from),
            "--cold" => a.cold = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn main() {
    gdx_exchange::install_crypto_provider();
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(run(a));
}

struct Client {
    url: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn push(&self, dataset: &str, token: &str, file: &Path) {
        let f = tokio::fs::File::open(file).await.expect("csv");
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
        let resp = self
            .http
            .post(format!("{}/api/v1/datasets/{dataset}/versions", self.url))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .expect("push");
        assert!(resp.status().is_success(), "push {dataset}: {}", resp.text().await.unwrap_or_default());
    }

    /// The governed answer as Arrow batches, and the time it took.
    async fn query(&self, token: &str, sql: &str) -> (Vec<RecordBatch>, Duration) {
        let start = Instant::now();
        let resp = self
            .http
            .post(format!("{}/api/v1/query", self.url))
            .bearer_auth(token)
            .header("accept", "application/vnd.apache.arrow.stream")
            .json(&json!({"sql": sql, "limit": 100000}))
            .send()
            .await
            .expect("query");
        let status = resp.status();
        let body = resp.bytes().await.expect("body");
        let took = start.elapsed();
        assert!(status.is_success(), "{sql}: {status} {}", String::from_utf8_lossy(&body));
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None).expect("arrow");
        (reader.map(|b| b.expect("batch")).collect(), took)
    }
}

async fn run(a: Args) {
    let keep = a.dir.is_some();
    let tmp = tempfile::tempdir().expect("tempdir");
    let work = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work).expect("work dir");
    let people = a.rows;
    let pensions = people / 4;
    let params = Params {
        seed: 42,
        people,
        enterprises: 1000,
        today: chrono::NaiveDate::from_ymd_opt(2026, 11, 27).expect("date"),
    };
    let pop_csv = work.join("population.csv");
    let pen_csv = work.join("pensions.csv");
    for (kind, rows, file) in [(Kind::Population, people, &pop_csv), (Kind::Pensions, pensions, &pen_csv)] {
        if !file.exists() {
            eprintln!("bench: generating {rows} {kind:?} rows");
            datagen::generate(kind, rows, &params, OutputFormat::Csv, file, &mut |_| {}).expect("datagen");
        }
    }

    let data = work.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let secret_file = work.join("secret.key");
    let config = gdx_exchange::Config {
        data_dir: data.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_token: Some(ADMIN.into()),
        secret_key_file: Some(secret_file.clone()),
        maintenance_interval_hours: 0,
        query_max_rows: 100_000,
        ..gdx_exchange::Config::default()
    };
    let memory = usize::try_from(config.query_memory_bytes).unwrap_or(usize::MAX);
    let app = gdx_exchange::App::start(config).await.expect("server");
    let c = Client { url: app.url(), http: reqwest::Client::new() };
    for (id, region) in [("gongan", "441400"), ("renshe", "441400"), ("minzheng", "441400"), ("meixian", "441403")] {
        c.call(reqwest::Method::POST, "/api/v1/departments", ADMIN, json!({"id": id, "name": id, "region": region}))
            .await;
    }
    let mut tokens = BTreeMap::new();
    for (id, department, role) in [
        ("gongan", "gongan", "steward"),
        ("renshe", "renshe", "steward"),
        ("minzheng", "minzheng", "analyst"),
        ("meixian", "meixian", "analyst"),
    ] {
        let body = json!({"id": format!("{id}_{role}"), "name": id, "department": department, "roles": [role], "kind": "user"});
        let v = c.call(reqwest::Method::POST, "/api/v1/principals", ADMIN, body).await;
        tokens.insert(id, v["token"].as_str().expect("token").to_string());
    }
    c.call(reqwest::Method::POST, "/api/v1/datasets", &tokens["gongan"], Kind::Population.definition("gongan")).await;
    c.call(reqwest::Method::POST, "/api/v1/datasets", &tokens["renshe"], Kind::Pensions.definition("renshe")).await;
    let start = Instant::now();
    c.push("gongan.population", &tokens["gongan"], &pop_csv).await;
    c.push("renshe.pensions", &tokens["renshe"], &pen_csv).await;
    eprintln!("bench: pushed in {:.1}s", start.elapsed().as_secs_f64());
    let policy = json!({
        "masks": [{"column": "birth_date", "mask": "year_only"}],
        "row_filters": [{"for": "meixian", "filter": "county_code = {{department.region}}"}]
    });
    c.call(reqwest::Method::PUT, "/api/v1/datasets/gongan.population/policy", &tokens["gongan"], policy).await;
    {
        use gdx_catalog::MetaStore;
        let store = gdx_catalog::SqliteStore::open(&data.join("meta.db")).expect("store");
        let grant = gdx_catalog::Grant {
            id: "bench".into(),
            dataset: "renshe.pensions".into(),
            department: "minzheng".into(),
            columns: None,
            unmask: vec!["monthly_amount".into()],
            row_filter: None,
            expires_at: None,
            rows_per_day: None,
            revoked_at: None,
            request: None,
            created_by: "renshe_steward".into(),
            created_at: chrono::Utc::now(),
        };
        store.create_grant(grant).await.expect("grant");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // The hand-written side: the same session settings, the same tables, the same mask functions.
    let secret = gdx_exchange::secret::load_or_create(&secret_file, &data).expect("secret");
    let key = Arc::new(HashKey::new(secret.key()));
    let spill = work.join("spill");
    std::fs::create_dir_all(&spill).expect("spill");
    let ctx = gdx_exchange::query::session(memory, &spill).expect("session");
    let lake = gdx_catalog::lake::Lake::new(data.join("lake"));
    let mut files = BTreeMap::new();
    for (name, department) in [("population", "gongan"), ("pensions", "renshe")] {
        let d: gdx_catalog::Dataset = {
            let v = c
                .call(
                    reqwest::Method::GET,
                    &format!("/api/v1/datasets/{department}.{name}"),
                    &tokens[department],
                    Value::Null,
                )
                .await;
            serde_json::from_value(v).expect("dataset")
        };
        let table = lake.open(&d).await.expect("lake").expect("table");
        let uris: Vec<String> = table.get_file_uris().expect("files").collect();
        files.insert(name, uris);
        ctx.register_table(name, table.table_provider().await.expect("provider")).expect("register");
    }
    let schema = ctx.table("population").await.expect("t").schema().as_arrow().clone();
    for (udf, column, mask) in [
        ("m_hash", "id_number", Mask::Hash),
        ("m_person_name", "name", Mask::PersonName),
        ("m_year_only", "birth_date", Mask::YearOnly),
        ("m_redact", "address", Mask::Redact),
        ("m_phone", "phone", Mask::Phone),
    ] {
        let dt = schema.field_with_name(column).expect("column").data_type().clone();
        ctx.register_udf(mask_udf(udf, mask, dt, key.clone()));
    }

    let mut results = Vec::new();
    for q in queries() {
        let pop = if q.reader == "meixian" { POP_MEIXIAN } else { POP_MINZHENG };
        let hand = q.hand.replace("{pop}", pop).replace("{pen}", PEN_MINZHENG);
        let token = &tokens[q.reader];
        // One warm-up each, checking that both give the same answer.
        let (g, _) = c.query(token, q.governed).await;
        let (h, _) = hand_run(&ctx, &hand).await;
        assert_eq!(render(&g), render(&h), "{}: the governed and hand-written answers differ", q.name);
        let (mut gov, mut plain) = (Vec::new(), Vec::new());
        for i in 0..a.runs {
            // Paired, alternating which goes first.
            if i % 2 == 0 {
                gov.push(c.query(token, q.governed).await.1);
                plain.push(hand_run(&ctx, &hand).await.1);
            } else {
                plain.push(hand_run(&ctx, &hand).await.1);
                gov.push(c.query(token, q.governed).await.1);
            }
        }
        // Cold: the page cache dropped before each run, when this process may.
        let (mut gov_cold, mut plain_cold) = (Vec::new(), Vec::new());
        if a.cold {
            for _ in 0..a.runs {
                drop_caches();
                gov_cold.push(c.query(token, q.governed).await.1);
                drop_caches();
                plain_cold.push(hand_run(&ctx, &hand).await.1);
            }
        }
        let (gm, pm) = (median(&gov), median(&plain));
        eprintln!(
            "bench: {:<34} governed {:>8.1} ms  hand-written {:>8.1} ms  {:.2}x",
            q.name,
            gm * 1e3,
            pm * 1e3,
            gm / pm
        );
        let secs = |v: &[Duration]| v.iter().map(Duration::as_secs_f64).collect::<Vec<_>>();
        results.push(json!({
            "name": q.name, "reader": q.reader, "governed_s": gm, "datafusion_s": pm,
            "governed_runs": secs(&gov), "datafusion_runs": secs(&plain),
            "governed_cold_runs": secs(&gov_cold), "datafusion_cold_runs": secs(&plain_cold),
            "rows": render(&g).len(), "checksum": checksum(&g),
        }));
    }
    let ratios: Vec<f64> = results
        .iter()
        .map(|r| r["governed_s"].as_f64().unwrap_or(0.0) / r["datafusion_s"].as_f64().unwrap_or(1.0))
        .collect();
    let geomean = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    eprintln!("bench: geometric mean governed / hand-written = {geomean:.3}");
    let out = json!({
        "rows": a.rows, "pension_rows": pensions, "runs": a.runs, "geomean_ratio": geomean,
        "queries": results, "files": files,
    });
    if let Some(path) = &a.out {
        std::fs::write(path, serde_json::to_string_pretty(&out).expect("json")).expect("write results");
    }
    app.stop().await.expect("stop");
    if keep {
        eprintln!("bench: data kept in {}", work.display());
    }
}

/// Writes the dirty pages out and drops the page cache (root only; elsewhere
/// the cold runs are warm, and say so on stderr once).
fn drop_caches() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let synced = std::process::Command::new("sync").status().is_ok_and(|s| s.success());
    if !synced || std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        WARNED.call_once(|| eprintln!("bench: cannot drop the page cache here: the cold runs are not cold"));
    }
}

/// The sum of the numbers in an answer and the text length of the rest: the
/// same answer has the same checksum whichever engine gave it.
fn checksum(batches: &[RecordBatch]) -> String {
    let mut numbers = 0f64;
    let mut text = 0usize;
    for row in render(batches) {
        for v in row.split('|') {
            match v.parse::<f64>() {
                Ok(n) => numbers += n,
                Err(_) => text += v.chars().count(),
            }
        }
    }
    format!("{numbers:.2}/{text}")
}

async fn hand_run(ctx: &SessionContext, sql: &str) -> (Vec<RecordBatch>, Duration) {
    let start = Instant::now();
    let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
    (batches, start.elapsed())
}

fn median(xs: &[Duration]) -> f64 {
    let mut v: Vec<f64> = xs.iter().map(Duration::as_secs_f64).collect();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// Rows as text, in order.
fn render(batches: &[RecordBatch]) -> Vec<String> {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = Vec::new();
    let opts = FormatOptions::default().with_null("∅");
    for b in batches {
        let fmts: Vec<_> =
            b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("fmt")).collect();
        for r in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join("|"));
        }
    }
    out
}

/// A mask as a scalar function over one column type.
fn mask_udf(name: &str, mask: Mask, input: DataType, key: Arc<HashKey>) -> ScalarUDF {
    let empty = arrow::array::new_empty_array(&input);
    let output = gdx_policies::masks::apply(mask, &empty, &key).expect("mask type").data_type().clone();
    create_udf(
        name,
        vec![input],
        output,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let masked: ArrayRef = gdx_policies::masks::apply(mask, &arrays[0], &key)?;
            Ok(ColumnarValue::Array(masked))
        }),
    )
}
