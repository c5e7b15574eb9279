//! Audit log: durable appends per second with group commit, for 1, 16, 64
//! and 256 concurrent appenders, and the latency of one awaited append, alone
//! and under load. Real files (a temporary folder on the disk of `--dir`,
//! default the system's temporary folder), `synchronous=FULL`.
//!
//!     cargo bench --workspace --bench audit -- --records 100000 --max-secs 20
//!
//! Each throughput run appends `--records` records in a fresh log, or stops
//! after `--max-secs` (one appender waits for one fsync per record), then
//! verifies the log; batches are counted by their checkpoints. Last, what
//! recording adds to a request over HTTP (a real server on loopback).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gdx_exchange::audit::{AuditLog, Record, verify_file};
use gdx_exchange::secret::{PlatformSecret, load_or_create};

struct Args {
    records: u64,
    max_secs: u64,
    latency_appends: usize,
    dir: PathBuf,
}

fn args() -> Args {
    let mut a = Args { records: 100_000, max_secs: 20, latency_appends: 2000, dir: std::env::temp_dir() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--records" => a.records = value().parse().expect("--records N"),
            "--max-secs" => a.max_secs = value().parse().expect("--max-secs N"),
            "--latency-appends" => a.latency_appends = value().parse().expect("--latency-appends N"),
            "--dir" => a.dir = PathBuf::from(value()),
            // cargo bench passes --bench; other harness flags are ignored.
            _ => {}
        }
    }
    a
}

/// A typical record of a governed query (about 450 bytes of JSON).
fn sample(i: u64, subject: &str) -> Record {
    Record {
        principal: Some(format!("analyst{}", i % 97)),
        department: Some("minzheng".into()),
        method: Some("POST".into()),
        route: Some("/api/v1/query".into()),
        status: Some(200),
        datasets: vec!["gongan.population".into(), "shebao.pensions".into()],
        versions: BTreeMap::from([("gongan.population".into(), 12), ("shebao.pensions".into(), 4)]),
        sql: Some(
            "SELECT p.county_code, count(*) FROM gongan.population p JOIN shebao.pensions s \
             ON p.id_number = s.id_number WHERE s.status = 'active' GROUP BY 1"
                .into(),
        ),
        rows: Some(i % 1000),
        purpose: Some("minimum living allowance review".into()),
        subjects: vec![subject.to_string()],
        ..Record::new("query", "ok")
    }
}

struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
    secret: PlatformSecret,
    log: AuditLog,
}

fn fresh(args: &Args) -> Log {
    let dir = tempfile::tempdir_in(&args.dir).expect("temporary folder");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data folder");
    let secret = load_or_create(&dir.path().join("secret.key"), &data).expect("secret");
    let path = data.join("audit.db");
    let log = AuditLog::open(&path, &secret).expect("open");
    Log { _dir: dir, path, secret, log }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

async fn throughput(args: &Args, appenders: u64) {
    let l = fresh(args);
    let subject = l.log.subject_hash("110101199001011234");
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (log, next, subject, records) = (l.log.clone(), next.clone(), subject.clone(), args.records);
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= records || Instant::now() > deadline {
                    break;
                }
                log.append(sample(i, &subject)).await.expect("append");
                done += 1;
            }
            done
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.expect("appender");
    }
    let secs = start.elapsed().as_secs_f64();
    let log = l.log.clone();
    tokio::task::spawn_blocking(move || log.close()).await.expect("close");
    let started = Instant::now();
    let report = verify_file(&l.path, &l.secret, None).expect("verify");
    let verify_secs = started.elapsed().as_secs_f64();
    assert!(report.ok && report.records == done, "{report:?}");
    let size = std::fs::metadata(&l.path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{appenders:>4} appenders: {done:>7} records in {secs:>6.2} s = {:>8.0} durable records/s; \
         {} batches (mean {:.1} records); verify {:.0} records/s; {:.0} bytes/record",
        done as f64 / secs,
        report.checkpoints,
        done as f64 / report.checkpoints.max(1) as f64,
        done as f64 / verify_secs,
        size as f64 / done.max(1) as f64,
    );
}

async fn latency(args: &Args, load: u64) {
    let l = fresh(args);
    let subject = l.log.subject_hash("110101199001011234");
    let stop = Arc::new(AtomicBool::new(false));
    let background = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..load {
        let (log, stop, background, subject) = (l.log.clone(), stop.clone(), background.clone(), subject.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                log.append(sample(i, &subject)).await.expect("append");
                background.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    if load > 0 {
        // Let the load reach its pace.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (base, start) = (background.load(Ordering::Relaxed), Instant::now());
    let mut times = Vec::with_capacity(args.latency_appends);
    for i in 0..args.latency_appends {
        let t = Instant::now();
        l.log.append(sample(i as u64, &subject)).await.expect("append");
        times.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = (background.load(Ordering::Relaxed) - base) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("appender");
    }
    times.sort_unstable();
    let under = if load > 0 { format!("under {load} appenders ({rate:.0} records/s)") } else { "alone".into() };
    println!(
        "one awaited append, {under}: p50 {}, p99 {}, max {} over {} appends",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(percentile(&times, 1.0)),
        times.len()
    );
    let log = l.log.clone();
    tokio::task::spawn_blocking(move || log.close()).await.expect("close");
}

/// What an audited request costs over HTTP: a real server on loopback, the
/// same kind of handler (one metadata read) on a route that is recorded
/// (`GET /api/v1/grants`) and on one that is not (`GET /api/v1/departments/{id}`),
/// sequentially (latency) and with 32 clients (requests per second).
async fn http(args: &Args) {
    const ADMIN: &str = "gdx_bench_admin_token_0123456789";
    gdx_exchange::install_crypto_provider();
    let dir = tempfile::tempdir_in(&args.dir).expect("tempdir");
    let config = gdx_exchange::Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_token: Some(ADMIN.into()),
        ..gdx_exchange::Config::default()
    };
    let app = gdx_exchange::App::start(config).await.expect("server");
    let url = app.url();
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{url}/api/v1/departments"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({"id": "gongan", "name": "梅州市公安局"}))
        .send()
        .await
        .expect("department");
    assert!(created.status().is_success());
    for (route, path, recorded) in [
        ("GET /api/v1/departments/{id}", "/api/v1/departments/gongan", false),
        ("GET /api/v1/grants", "/api/v1/grants", true),
    ] {
        let get = |client: reqwest::Client, url: String| async move {
            let started = Instant::now();
            let r = client.get(url).bearer_auth(ADMIN).send().await.expect("sent");
            assert!(r.status().is_success(), "{}", r.status());
            r.bytes().await.expect("body");
            started.elapsed()
        };
        let mut times = Vec::new();
        for _ in 0..args.latency_appends {
            times.push(get(client.clone(), format!("{url}{path}")).await);
        }
        times.sort();
        let n = args.latency_appends as u64 * 4;
        let started = Instant::now();
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (client, url, next) = (client.clone(), format!("{url}{path}"), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    get(client.clone(), url.clone()).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "http {route:<30} audited {:<5} sequential p50 {} p99 {}  |  32 clients {rate:>8.0} requests/s",
            recorded,
            ms(percentile(&times, 0.50)),
            ms(percentile(&times, 0.99)),
        );
    }
    app.stop().await.expect("stops");
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    println!(
        "audit log on {} ({} cores): up to {} records or {} s per run",
        args.dir.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        args.records,
        args.max_secs
    );
    runtime.block_on(async {
        for appenders in [1, 16, 64, 256] {
            throughput(&args, appenders).await;
        }
        latency(&args, 0).await;
        latency(&args, 64).await;
        http(&args).await;
    });
}
