//! The `gdx` command line against a real server on loopback.

use std::path::{Path, PathBuf};

use gdx_exchange::{App, Config};
use serde_json::Value;

const ADMIN: &str = "gdx_cli_test_admin_token_0123456789";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn gdx(url: &str, token: Option<&str>, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gdx"));
    cmd.env_remove("GDX_URL").env_remove("GDX_TOKEN").env_remove("GDX_DATA_DIR");
    cmd.arg("--url").arg(url);
    if let Some(t) = token {
        cmd.env("GDX_TOKEN", t);
    }
    cmd.args(args);
    let out = cmd.output().await.expect("gdx runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

#[tokio::test]
async fn cli_administers_and_searches_the_catalogue() {
    gdx_exchange::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = Config {
        data_dir: data.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        admin_token: Some(ADMIN.into()),
        ..Config::default()
    };
    let app = App::start(config).await.expect("server starts");
    let url = app.url();

    let r =
        gdx(&url, Some(ADMIN), &["department", "add", "gongan", "--name", "梅州市公安局", "--region", "441400"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("梅州市公安局"), "{}", r.stdout);
    let r = gdx(&url, Some(ADMIN), &["department", "list", "--json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["items"][0]["id"], "gongan");

    let r = gdx(
        &url,
        Some(ADMIN),
        &[
            "principal",
            "add",
            "--name",
            "李四",
            "--department",
            "gongan",
            "--role",
            "steward",
            "--id",
            "steward1",
            "--json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steward = serde_json::from_str::<Value>(&r.stdout).expect("json")["token"].as_str().expect("token").to_string();
    let r =
        gdx(&url, Some(ADMIN), &["principal", "add", "--name", "王五", "--department", "gongan", "--role", "analyst"])
            .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let analyst =
        r.stdout.lines().find_map(|l| l.split(": ").nth(1).filter(|t| t.starts_with("gdx_"))).expect("token line");

    let r = gdx(&url, Some(&steward), &["me"]).await;
    assert!(r.stdout.contains("steward1") && r.stdout.contains("gongan"), "{}", r.stdout);

    // Register from TOML and JSON definitions.
    let toml = examples().join("population.toml");
    let r = gdx(&url, Some(&steward), &["dataset", "register", toml.to_str().expect("path")]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("gongan.population"), "{}", r.stdout);
    let json = examples().join("vehicles.json");
    let r = gdx(&url, Some(&steward), &["dataset", "register", json.to_str().expect("path")]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Masks and row filters from a TOML file, shown back.
    let policy = examples().join("population-policy.toml");
    let r = gdx(&url, Some(&steward), &["policy", "set", "gongan.population", policy.to_str().expect("path")]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = gdx(&url, Some(&steward), &["policy", "show", "gongan.population"]).await;
    assert!(r.stdout.contains("year_only") && r.stdout.contains("role:service"), "{}", r.stdout);
    assert!(
        r.stdout.contains("county_code = {{department.region}}") && r.stdout.contains("set by steward1"),
        "{}",
        r.stdout
    );
    let bad_policy = dir.path().join("bad-policy.json");
    std::fs::write(&bad_policy, r#"{"row_filters": [{"filter": "county_code = '{{department.region}}'"}]}"#)
        .expect("write");
    let r =
        gdx(&url, Some(&steward), &["policy", "set", "gongan.population", bad_policy.to_str().expect("path")]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("row_filters[0].filter") && r.stderr.contains("quoted"), "{}", r.stderr);

    // Search by a Chinese word: a table, or JSON.
    let r = gdx(&url, Some(analyst), &["dataset", "search", "人口"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("gongan.population") && r.stdout.contains("户籍人口基础信息"), "{}", r.stdout);
    assert!(!r.stdout.contains("gongan.vehicles"), "{}", r.stdout);
    let r = gdx(&url, Some(analyst), &["dataset", "search", "号牌", "--json"]).await;
    let v: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["items"][0]["id"], "gongan.vehicles");
    assert_eq!(v["items"][0]["access"], "read");
    let r = gdx(&url, Some(analyst), &["dataset", "list", "--sharing", "conditional"]).await;
    assert!(r.stdout.contains("gongan.vehicles") && !r.stdout.contains("gongan.population"), "{}", r.stdout);
    let r = gdx(&url, Some(analyst), &["dataset", "show", "gongan.population"]).await;
    assert!(r.stdout.contains("公民身份号码") && r.stdout.contains("1-01-001-0001"), "{}", r.stdout);

    // Errors: a clear message and a non-zero exit.
    let r = gdx(&url, Some(analyst), &["dataset", "register", toml.to_str().expect("path")]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"department":"gongan","name":"bad","title":"t","resource_code":"9-9","classification":"basic",
            "sharing":"none","update_cycle":"daily","primary_key":["k"],"columns":[{"name":"k","type":"varchar"}]}"#,
    )
    .expect("write");
    let r = gdx(&url, Some(&steward), &["dataset", "register", bad.to_str().expect("path")]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("columns[0].type") && r.stderr.contains("primary_key[0]"), "{}", r.stderr);
    let r = gdx(&url, None, &["me"]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("401"), "{}", r.stderr);
    let r = gdx("http://127.0.0.1:9", Some(ADMIN), &["me"]).await;
    assert!(r.code != 0 && r.stderr.contains("cannot reach"), "{}", r.stderr);

    // Tokens: create, use, revoke.
    let r = gdx(&url, Some(ADMIN), &["token", "create", "steward1", "--json"]).await;
    let t: Value = serde_json::from_str(&r.stdout).expect("json");
    let (id, secret) = (t["id"].as_str().expect("id"), t["token"].as_str().expect("secret"));
    assert_eq!(gdx(&url, Some(secret), &["me"]).await.code, 0);
    assert_eq!(gdx(&url, Some(ADMIN), &["token", "revoke", id]).await.code, 0);
    assert_ne!(gdx(&url, Some(secret), &["me"]).await.code, 0);

    // Push a file with progress, then list the versions.
    let csv = examples().join("population.csv");
    let r = gdx(&url, Some(&steward), &["push", "gongan.population", csv.to_str().expect("path")]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("version 1 committed: 20 rows written"), "{}", r.stdout);
    assert!(r.stderr.contains("rows/s"), "{}", r.stderr);
    let r = gdx(
        &url,
        Some(&steward),
        &["push", "gongan.population", csv.to_str().expect("path"), "--mode", "upsert", "--json"],
    )
    .await;
    let v: Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!((v["version"].as_i64(), v["row_count"].as_i64()), (Some(2), Some(20)));
    let r = gdx(&url, Some(analyst), &["dataset", "versions", "gongan.population"]).await;
    assert!(r.stdout.contains("upsert") && r.stdout.contains("append"), "{}", r.stdout);
    // Governed SQL: the steward in clear, an analyst of another department masked.
    let sql = "SELECT name FROM gongan.population ORDER BY id_number LIMIT 1";
    let r = gdx(&url, Some(&steward), &["sql", sql]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("1 row(s); read: gongan.population@2"), "{}", r.stdout);
    let clear = r.stdout.clone();
    assert_eq!(gdx(&url, Some(ADMIN), &["department", "add", "renshe", "--name", "梅州市人社局"]).await.code, 0);
    let r = gdx(
        &url,
        Some(ADMIN),
        &["principal", "add", "--name", "赵六", "--department", "renshe", "--role", "analyst", "--json"],
    )
    .await;
    let outsider =
        serde_json::from_str::<Value>(&r.stdout).expect("json")["token"].as_str().expect("token").to_string();
    let r = gdx(&url, Some(&outsider), &["sql", sql, "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).expect("json");
    let masked = v["rows"][0][0].as_str().expect("name").to_string();
    assert!(masked.ends_with('*') && !clear.contains(&masked), "{masked} / {clear}");
    let r = gdx(&url, Some(analyst), &["sql", "DROP TABLE gongan.population"]).await;
    assert!(r.code != 0 && r.stderr.contains("may not run (400)"), "{}", r.stderr);
    let r = gdx(&url, Some(&outsider), &["sql", sql, "--format", "csv"]).await;
    assert_eq!((r.code, r.stdout.lines().collect::<Vec<_>>()), (0, vec!["name", masked.as_str()]), "{}", r.stderr);
    let r = gdx(&url, Some(&outsider), &["sql", "DROP TABLE gongan.population", "--format", "csv"]).await;
    assert!(r.code != 0 && r.stdout.is_empty() && r.stderr.contains("may not run (400)"), "{}", r.stderr);
    // Grants: none yet; an unknown one cannot be revoked.
    let r = gdx(&url, Some(&steward), &["grant", "list", "--dataset", "gongan.population", "--json"]).await;
    assert_eq!((r.code, r.stdout.trim()), (0, "[]"), "{}", r.stderr);
    let r = gdx(&url, Some(&steward), &["grant", "revoke", "gr_nothing"]).await;
    assert!(r.code != 0 && r.stderr.contains("(404)"), "{}", r.stderr);
    // A sharing request for names in clear: made, seen in the provider's inbox, approved.
    let r = gdx(
        &url,
        Some(&outsider),
        &["request", "create", "gongan.population", "--purpose", "社保待遇核验", "--unmask", "name", "--json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let request = serde_json::from_str::<Value>(&r.stdout).expect("json")["id"].as_str().expect("id").to_string();
    let r = gdx(&url, Some(&steward), &["request", "list", "--role", "provider"]).await;
    assert!(r.code == 0 && r.stdout.contains(&request) && r.stdout.contains("pending"), "{}", r.stdout);
    let r = gdx(&url, Some(&steward), &["request", "approve", &request]).await;
    assert!(r.code == 0 && r.stdout.contains("approved; grant gr_"), "{} {}", r.stdout, r.stderr);
    let r = gdx(&url, Some(&steward), &["request", "approve", &request]).await;
    assert!(r.code != 0 && r.stderr.contains("(409)"), "{}", r.stderr);
    let r = gdx(&url, Some(&outsider), &["sql", sql, "--format", "csv"]).await;
    let name = r.stdout.lines().nth(1).unwrap_or("*");
    assert!(!name.contains('*'), "the name in clear under the grant: {}", r.stdout);
    // Lookups and verification by the provider's steward.
    let r = gdx(
        &url,
        Some(&steward),
        &["sql", "SELECT id_number, name FROM gongan.population ORDER BY id_number LIMIT 1", "--format", "csv"],
    )
    .await;
    let first = r.stdout.lines().nth(1).expect("a row").to_string();
    let (id, name) = first.split_once(',').expect("two columns");
    let r = gdx(&url, Some(&steward), &["get", "gongan.population", id]).await;
    assert!(r.code == 0 && r.stdout.contains(name) && r.stdout.contains("1 found"), "{} {}", r.stdout, r.stderr);
    let r = gdx(&url, Some(&steward), &["get", "gongan.population", "441402199901019999"]).await;
    assert!(r.code != 0 && r.stdout.contains("0 found"), "{} {}", r.stdout, r.stderr);
    let r = gdx(&url, Some(&steward), &["verify", "gongan.population", id, &format!("name={name}")]).await;
    assert!(r.code == 0 && r.stdout.contains("name: matches"), "{} {}", r.stdout, r.stderr);
    let r = gdx(&url, Some(&steward), &["verify", "gongan.population", id, "name=无名氏"]).await;
    assert!(r.code != 0 && r.stdout.contains("does not match"), "{} {}", r.stdout, r.stderr);
    // Feedback on a record, answered by the provider.
    let r = gdx(
        &url,
        Some(&outsider),
        &["feedback", "create", "gongan.population", "--key", "441402199001010011", "--comment", "姓名有误", "--json"],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fb = serde_json::from_str::<Value>(&r.stdout).expect("json")["id"].as_str().expect("id").to_string();
    let r = gdx(&url, Some(&steward), &["feedback", "resolve", &fb, "--outcome", "rejected", "--reason", "经核实无误"])
        .await;
    assert!(r.code == 0 && r.stdout.contains("resolved: rejected"), "{} {}", r.stdout, r.stderr);
    // An auditor lists the trail.
    let r = gdx(
        &url,
        Some(ADMIN),
        &["principal", "add", "--name", "审计员", "--department", "gongan", "--role", "auditor", "--json"],
    )
    .await;
    let auditor = serde_json::from_str::<Value>(&r.stdout).expect("json")["token"].as_str().expect("token").to_string();
    let r = gdx(&url, Some(&auditor), &["audit", "list", "--action", "request.approve"]).await;
    assert!(r.code == 0 && r.stdout.contains("request.approve"), "{} {}", r.stdout, r.stderr);
    let r = gdx(&url, Some(&auditor), &["audit", "verify"]).await;
    assert!(r.code == 0 && r.stdout.contains("audit log holds"), "{} {}", r.stdout, r.stderr);
    // A bad file: the problems, row by row, and a non-zero exit.
    let broken = dir.path().join("broken.csv");
    std::fs::write(
        &broken,
        "id_number,name
123,张三
",
    )
    .expect("write");
    let r = gdx(&url, Some(&steward), &["push", "gongan.population", broken.to_str().expect("path")]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("row 1, column id_number"), "{}", r.stderr);
    let r = gdx(&url, Some(&steward), &["push", "gongan.population", bad.to_str().expect("path")]).await;
    assert!(r.code != 0 && r.stderr.contains("--format"), "{}", r.stderr);

    // Backup while the server runs, with progress on standard error.
    let archive = dir.path().join("gdx.tar");
    let r = gdx(
        &url,
        None,
        &["backup", "--data-dir", data.to_str().expect("path"), "--out", archive.to_str().expect("path")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("snapshot meta.db") && archive.is_file(), "{}", r.stderr);
    let restored = dir.path().join("restored");
    let r = gdx(
        &url,
        None,
        &["restore", "--data-dir", restored.to_str().expect("path"), "--from", archive.to_str().expect("path")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(restored.join("meta.db").is_file());
    app.stop().await.expect("stops");

    // Offline verification of the audit log; an edited record is named and fails the command.
    let args = ["audit", "verify", "--data-dir", data.to_str().expect("path")];
    let r = gdx(&url, None, &args).await;
    assert!(r.code == 0 && r.stdout.contains("audit log holds"), "{} {}", r.stdout, r.stderr);
    let db = rusqlite::Connection::open(data.join("audit.db")).expect("audit.db");
    db.execute("UPDATE audit_log SET record = replace(record, '\"ok\"', '\"denied\"') WHERE seq = 3", [])
        .expect("edit");
    let r = gdx(&url, None, &args).await;
    assert!(r.code != 0 && r.stderr.contains("BROKEN at record 3"), "{} {}", r.stdout, r.stderr);
}

#[tokio::test]
async fn cli_verifies_webhook_signatures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"id":"evt_1","rule":"r1","subject":"s","message":"hi"}"#).expect("body");
    let secret = "whsec_c2VjcmV0LWZvci10ZXN0cw==";
    let now = chrono::Utc::now().timestamp().to_string();
    let signature = gdx_exchange::webhook::Secret::parse(secret).expect("secret").sign(
        "evt_1",
        now.parse().expect("seconds"),
        &std::fs::read(&body).expect("read"),
    );
    let path = body.to_str().expect("utf-8 path");
    let args = |sig: &str, ts: &str| -> Vec<String> {
        ["webhook", "verify", "--secret", secret, "--id", "evt_1", "--timestamp", ts, "--signature", sig, path]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let run = |a: Vec<String>| async move {
        gdx("http://127.0.0.1:9", None, &a.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    let ok = run(args(&signature, &now)).await;
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("signature valid"), "{}", ok.stdout);
    // A changed body, a forged signature, an old timestamp: non-zero, with the reason.
    std::fs::write(&body, br#"{"id":"evt_1","rule":"r1","subject":"other","message":"hi"}"#).expect("body");
    let changed = run(args(&signature, &now)).await;
    assert_ne!(changed.code, 0);
    assert!(changed.stderr.contains("no signature matches"), "{}", changed.stderr);
    // A valid signature of an hour ago.
    let old = chrono::Utc::now().timestamp() - 3600;
    let old_signature = gdx_exchange::webhook::Secret::parse(secret).expect("secret").sign(
        "evt_1",
        old,
        &std::fs::read(&body).expect("read"),
    );
    let stale = run(args(&old_signature, &old.to_string())).await;
    assert_ne!(stale.code, 0);
    assert!(stale.stderr.contains("more than the tolerance"), "{}", stale.stderr);
    let none = run(args("sha256=abc", &now)).await;
    assert_ne!(none.code, 0);
    assert!(none.stderr.contains("no v1 signature"), "{}", none.stderr);
}
