//! Push rules end to end: a real receiver on loopback checks every
//! signature; commits trigger evaluations; only new or changed matches
//! become events; a failing receiver gets each event once it recovers,
//! under the same id; events can be pulled; an owner who loses access
//! stops matching.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use gdx_tests::{TestServer, id_number, population};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    /// Attempts per webhook-id.
    attempts: HashMap<String, u32>,
    /// Bodies accepted, in order.
    accepted: Vec<Value>,
    /// Attempts still to refuse with 500.
    fail: u32,
    /// Requests whose signature did not verify.
    bad: u32,
    /// Hold every request without answering (a receiver mid-delivery).
    hold: bool,
}

type Shared = Arc<Mutex<Seen>>;

async fn receive(seen: axum::extract::State<Shared>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let secret = gdx_exchange::webhook::Secret::parse(SECRET).expect("secret");
    let now = chrono::Utc::now().timestamp();
    let ok = gdx_exchange::webhook::verify(
        &secret,
        &h("webhook-id"),
        &h("webhook-timestamp"),
        &body,
        &h("webhook-signature"),
        now,
        gdx_exchange::webhook::DEFAULT_TOLERANCE,
    );
    let hold = {
        let mut seen = seen.lock().expect("lock");
        if ok.is_err() {
            seen.bad += 1;
            return AxumStatus::UNAUTHORIZED;
        }
        *seen.attempts.entry(h("webhook-id")).or_default() += 1;
        seen.hold
    };
    if hold {
        tokio::time::sleep(Duration::from_secs(120)).await;
        return AxumStatus::SERVICE_UNAVAILABLE;
    }
    let mut seen = seen.lock().expect("lock");
    if seen.fail > 0 {
        seen.fail -= 1;
        return AxumStatus::INTERNAL_SERVER_ERROR;
    }
    seen.accepted.push(serde_json::from_slice(&body).expect("json body"));
    AxumStatus::NO_CONTENT
}

async fn receiver() -> (String, Shared) {
    let seen: Shared = Arc::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

/// Waits until `check` holds (up to 30 s).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn csv(rows: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut out = String::from("id_number,name,birth_date,county_code,income\n");
    for (id, name, county) in rows {
        out.push_str(&format!("{id},{name},1966-01-01,{county},100\n"));
    }
    out.into_bytes()
}

#[tokio::test]
async fn commits_push_new_and_changed_matches_once_each() {
    let s = TestServer::start_with(|c| {
        c.webhook_allow_private = true;
        c.webhook_retry_secs = vec![1, 1, 1];
    })
    .await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let service = s.principal("sv", "renshe", &["service"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let (code, v) = s.post("/api/v1/datasets", &steward, population("gongan", "residents", "1-02")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let (url, seen) = receiver().await;
    let rule = json!({
        "name": "pension reminder",
        "sql": "SELECT id_number, name FROM gongan.residents WHERE county_code = '441402'",
        "subject_column": "id_number",
        "message": "{{name}}，您可申领养老金。",
        "trigger": {"on_change": ["gongan.residents"]},
        "webhook": {"url": url, "secret": SECRET},
        "purpose": "养老金待遇主动提醒"
    });
    // Only services register rules; the template must name columns of the answer.
    assert_eq!(s.post("/api/v1/push/rules", &analyst, rule.clone()).await.0, StatusCode::FORBIDDEN);
    let mut bad = rule.clone();
    bad["message"] = json!("{{nickname}}");
    let (code, v) = s.post("/api/v1/push/rules", &service, bad).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // A rule may name a dataset without a version yet.
    let (code, created) = s.post("/api/v1/push/rules", &service, rule.clone()).await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    assert!(created.get("secret").is_none() && !created.to_string().contains(SECRET), "{created}");
    let id = created["id"].as_str().expect("rule id").to_string();
    assert_eq!(s.post("/api/v1/push/rules", &service, rule.clone()).await.0, StatusCode::CONFLICT);

    let (a, b) = (id_number("441402", "19660101", 1), id_number("441403", "19660101", 2));
    let push = |rows: Vec<u8>| {
        let s = &s;
        let steward = &steward;
        async move {
            let (code, v) = s
                .upload("/api/v1/datasets/gongan.residents/versions?mode=replace", steward, "text/csv", rows, &[])
                .await;
            assert_eq!(code, StatusCode::CREATED, "{v}");
        }
    };
    let evaluations = |want: i64| {
        let (s, service, id) = (&s, &service, &id);
        async move {
            for _ in 0..300 {
                let (_, r) = s.get(&format!("/api/v1/push/rules/{id}"), service).await;
                if r["state"]["evaluations"].as_i64() >= Some(want) {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("rule not evaluated {want} times");
        }
    };

    // First push: one resident of 441402 matches.
    push(csv(&[(&a, "张三", "441402"), (&b, "李四", "441403")])).await;
    until("the first event", || seen.lock().expect("lock").accepted.len() == 1).await;
    // The rule reads as its owner does: another department's service sees
    // the resident ID as a keyed hash and the name masked.
    let subject = {
        let seen = seen.lock().expect("lock");
        let e = &seen.accepted[0];
        let subject = e["subject"].as_str().expect("subject").to_string();
        assert_eq!(e["rule"], json!(id), "{e}");
        assert!(subject.len() == 64 && subject != a, "{e}");
        assert_eq!(e["message"], json!("张*，您可申领养老金。"));
        assert_eq!(e["data"], json!({"id_number": subject, "name": "张*"}));
        assert_eq!(e["versions"], json!({"gongan.residents": 1}));
        assert_eq!(seen.bad, 0);
        subject
    };

    // The same rows again: evaluated, nothing new.
    push(csv(&[(&a, "张三", "441402"), (&b, "李四", "441403")])).await;
    let r = evaluations(2).await;
    assert_eq!((r["state"]["status"].as_str(), r["state"]["last_events"].as_i64()), (Some("ok"), Some(0)), "{r}");

    // A changed row (a new surname: the mask shows it) is one event; the receiver fails twice first and gets it under the same id.
    seen.lock().expect("lock").fail = 2;
    push(csv(&[(&a, "章三", "441402"), (&b, "李四", "441403")])).await;
    until("the changed row's event", || seen.lock().expect("lock").accepted.len() == 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.accepted.len(), 2, "each event exactly once");
        let second = seen.accepted[1]["id"].as_str().expect("id").to_string();
        assert_eq!(seen.attempts[&second], 3, "two refusals, then accepted, all under one webhook-id");
        assert_eq!(seen.accepted[1]["subject"], json!(subject));
    }
    let (code, d) = s.get(&format!("/api/v1/push/rules/{id}/deliveries"), &service).await;
    assert_eq!(code, StatusCode::OK, "{d}");
    let items = d["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!((&items[1]["state"], &items[1]["attempts"]), (&json!("delivered"), &json!(3)), "{d}");

    // Pulled: oldest first, and after the first only the second.
    let (code, ev) = s.get(&format!("/api/v1/push/rules/{id}/events"), &service).await;
    assert_eq!(code, StatusCode::OK, "{ev}");
    let first = ev["items"][0]["id"].as_str().expect("id").to_string();
    assert_eq!(ev["items"].as_array().map(Vec::len), Some(2));
    let (_, after) = s.get(&format!("/api/v1/push/rules/{id}/events?after={first}"), &service).await;
    assert_eq!(after["items"].as_array().map(Vec::len), Some(1), "{after}");

    // Another principal sees no such rule.
    let other = s.principal("sv2", "renshe", &["service"]).await;
    assert_eq!(s.get(&format!("/api/v1/push/rules/{id}"), &other).await.0, StatusCode::NOT_FOUND);

    // Pushed subjects are in the data tracker.
    let auditor = s.principal("au", "gongan", &["auditor"]).await;
    let (code, t) = s.get(&format!("/api/v1/audit/subjects/{subject}"), &auditor).await;
    assert_eq!(code, StatusCode::OK, "{t}");
    assert!(t.to_string().contains("push"), "{t}");

    // An owner that loses access stops matching.
    assert_eq!(s.patch("/api/v1/principals/sv", gdx_tests::ADMIN, json!({"disabled": true})).await.0, StatusCode::OK);
    push(csv(&[(&a, "张三丰", "441402"), (&b, "李四", "441403")])).await;
    // The owner cannot read its rule now; the store tells when it was evaluated.
    let db = rusqlite::Connection::open(s.data_dir().join("push.db")).expect("push.db");
    let state = || -> (i64, Option<String>, Option<String>) {
        db.query_row("SELECT evaluations, status, error FROM rule_state WHERE rule = ?1", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("rule state")
    };
    until("the evaluation as a disabled owner", || state().0 >= 4).await;
    let (_, status, error) = state();
    assert_eq!(status.as_deref(), Some("failed"), "{error:?}");
    assert!(error.as_deref().is_some_and(|e| e.contains("disabled")), "{error:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(seen.lock().expect("lock").accepted.len(), 2);

    // Deleted: gone.
    assert_eq!(s.patch("/api/v1/principals/sv", gdx_tests::ADMIN, json!({"disabled": false})).await.0, StatusCode::OK);
    let (code, _) = s.call(reqwest::Method::DELETE, &format!("/api/v1/push/rules/{id}"), Some(&service), None).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(s.get(&format!("/api/v1/push/rules/{id}"), &service).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn webhooks_at_private_addresses_are_refused_by_default() {
    let s = TestServer::start().await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let service = s.principal("sv", "renshe", &["service"]).await;
    for url in
        ["http://127.0.0.1:9/hook", "http://10.0.0.1/hook", "http://[::ffff:192.168.1.1]/hook", "file:///etc/passwd"]
    {
        let (code, v) = s
            .post(
                "/api/v1/push/rules",
                &service,
                json!({"name": "r", "sql": "SELECT 1 AS k", "subject_column": "k",
                       "trigger": {"schedule": "0 8 * * *"}, "webhook": {"url": url, "secret": "s3cret"},
                       "purpose": "test"}),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {v}");
    }
}

/// A rule over `gongan.residents` for the service `sv`, with changes to its definition.
fn rule_over_residents(url: Option<&str>, change: impl FnOnce(&mut Value)) -> Value {
    let mut rule = json!({
        "name": "reminder",
        "sql": "SELECT id_number, name FROM gongan.residents WHERE county_code = '441402'",
        "subject_column": "id_number",
        "message": "{{name}}",
        "trigger": {"on_change": ["gongan.residents"]},
        "purpose": "养老金待遇主动提醒"
    });
    if let Some(url) = url {
        rule["webhook"] = json!({"url": url, "secret": SECRET});
    }
    change(&mut rule);
    rule
}

/// A city with gongan's residents dataset, its steward and renshe's service.
async fn city(s: &TestServer) -> (String, String) {
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let service = s.principal("sv", "renshe", &["service"]).await;
    let (code, v) = s.post("/api/v1/datasets", &steward, population("gongan", "residents", "1-02")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    (steward, service)
}

async fn replace(s: &TestServer, steward: &str, rows: &[(&str, &str, &str)]) {
    let (code, v) =
        s.upload("/api/v1/datasets/gongan.residents/versions?mode=replace", steward, "text/csv", csv(rows), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
}

async fn run(s: &TestServer, service: &str, id: &str) -> Value {
    let (code, v) = s.post(&format!("/api/v1/push/rules/{id}/run"), service, json!({})).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    v["evaluation"].clone()
}

#[tokio::test]
async fn backfill_off_and_max_per_subject_shape_what_is_pushed() {
    let s = TestServer::start().await;
    let (steward, service) = city(&s).await;
    let (a, b, c) =
        (id_number("441402", "19660101", 1), id_number("441402", "19660101", 2), id_number("441402", "19660101", 3));
    replace(&s, &steward, &[(&a, "张三", "441402"), (&b, "李四", "441402")]).await;

    // The rules here run only when asked (their schedule is once a year),
    // so each run's outcome is its own.
    let yearly = json!({"schedule": "0 0 1 1 *"});
    // Without backfill the first evaluation only learns who matches already.
    let (code, v) = s
        .post(
            "/api/v1/push/rules",
            &service,
            rule_over_residents(None, |r| {
                r["backfill"] = json!(false);
                r["trigger"] = yearly.clone();
            }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let quiet = v["id"].as_str().expect("id").to_string();
    let e = run(&s, &service, &quiet).await;
    assert_eq!((e["matched"].as_u64(), e["events"].as_u64()), (Some(2), Some(0)), "{e}");
    // At most one event per subject a day: a second change the same day is held.
    let (code, v) = s
        .post(
            "/api/v1/push/rules",
            &service,
            rule_over_residents(None, |r| {
                r["name"] = json!("once a day");
                r["max_per_subject"] = json!(1);
                r["trigger"] = yearly.clone();
            }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let daily = v["id"].as_str().expect("id").to_string();
    let e = run(&s, &service, &daily).await;
    assert_eq!(e["events"].as_u64(), Some(2), "{e}");
    let (code, v) =
        s.post("/api/v1/push/rules", &service, rule_over_residents(None, |r| r["max_per_subject"] = json!(0))).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // A newcomer, and a changed name.
    replace(&s, &steward, &[(&a, "章三", "441402"), (&b, "李四", "441402"), (&c, "王五", "441402")]).await;
    let e = run(&s, &service, &quiet).await;
    assert_eq!((e["matched"].as_u64(), e["events"].as_u64()), (Some(3), Some(2)), "{e}");
    let e = run(&s, &service, &daily).await;
    // The newcomer is pushed; the changed name waits for tomorrow.
    assert_eq!((e["events"].as_u64(), e["held"].as_u64()), (Some(1), Some(1)), "{e}");
    let (_, ev) = s.get(&format!("/api/v1/push/rules/{quiet}/events"), &service).await;
    let mut names: Vec<&str> =
        ev["items"].as_array().expect("items").iter().filter_map(|e| e["message"].as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["王*", "章*"], "{ev}");
    // Without a webhook, events are only pulled: no delivery is queued.
    let (_, d) = s.get(&format!("/api/v1/push/rules/{quiet}/deliveries"), &service).await;
    assert_eq!(d["items"], json!([]), "{d}");

    // A subject that stops matching and comes back is pushed again.
    replace(&s, &steward, &[(&a, "章三", "441402"), (&b, "李四", "441403"), (&c, "王五", "441402")]).await;
    let e = run(&s, &service, &quiet).await;
    assert_eq!((e["gone"].as_u64(), e["events"].as_u64()), (Some(1), Some(0)), "{e}");
    replace(&s, &steward, &[(&a, "章三", "441402"), (&b, "李四", "441402"), (&c, "王五", "441402")]).await;
    let e = run(&s, &service, &quiet).await;
    assert_eq!(e["events"].as_u64(), Some(1), "{e}");

    // Bad schedules are refused when the rule is made.
    for bad in ["61 * * * *", "* * *", "0 8 * * mon-"] {
        let (code, v) = s
            .post(
                "/api/v1/push/rules",
                &service,
                rule_over_residents(None, |r| {
                    r["name"] = json!(bad);
                    r["trigger"] = json!({"schedule": bad});
                }),
            )
            .await;
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
    }
}

#[tokio::test]
async fn a_server_stopped_mid_delivery_resends_the_same_event_after_restart() {
    let mut s = TestServer::start_with(|c| {
        c.webhook_allow_private = true;
        c.webhook_retry_secs = vec![1, 1];
        c.webhook_timeout_secs = 60;
    })
    .await;
    let (steward, service) = city(&s).await;
    let (url, seen) = receiver().await;
    seen.lock().expect("lock").hold = true;
    let (code, v) = s.post("/api/v1/push/rules", &service, rule_over_residents(Some(&url), |_| {})).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    replace(&s, &steward, &[(&id_number("441402", "19660101", 1), "张三", "441402")]).await;
    // The receiver has the request and has not answered: stop the server now.
    until("the first attempt", || !seen.lock().expect("lock").attempts.is_empty()).await;
    s.stop().await;
    let first: Vec<String> = seen.lock().expect("lock").attempts.keys().cloned().collect();
    seen.lock().expect("lock").hold = false;
    s.restart().await;
    until("the delivery after restart", || !seen.lock().expect("lock").accepted.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    {
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.accepted.len(), 1, "one event, delivered once");
        assert_eq!(vec![seen.accepted[0]["id"].as_str().expect("id").to_string()], first, "under the same webhook-id");
    }
    let (_, d) = s.get(&format!("/api/v1/push/rules/{id}/deliveries"), &service).await;
    assert_eq!(d["items"][0]["state"], json!("delivered"), "{d}");
}

#[tokio::test]
async fn a_rule_over_one_dataset_reads_only_what_upserts_changed() {
    let s = TestServer::start().await;
    let (steward, service) = city(&s).await;
    let (a, b, c, d) = (
        id_number("441402", "19660101", 1),
        id_number("441403", "19660101", 2),
        id_number("441402", "19660101", 3),
        id_number("441402", "19660101", 4),
    );
    let upsert = |rows: &[(&str, &str, &str)]| {
        let body = csv(rows);
        let (s, steward) = (&s, &steward);
        async move {
            let (code, v) = s
                .upload("/api/v1/datasets/gongan.residents/versions?mode=upsert", steward, "text/csv", body, &[])
                .await;
            assert_eq!(code, StatusCode::CREATED, "{v}");
            v["version"].as_i64().expect("version")
        }
    };
    // Evaluated after each commit; the state tells what it read.
    let evaluated = |version: i64| {
        let (s, service) = (&s, &service);
        async move {
            for _ in 0..300 {
                let (_, list) = s.get("/api/v1/push/rules", service).await;
                let r = list["items"][0].clone();
                if r["state"]["seen"]["gongan.residents"].as_i64() == Some(version) {
                    return r["state"].clone();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the rule did not see version {version}");
        }
    };
    let events = || {
        let (s, service) = (&s, &service);
        async move {
            let (_, list) = s.get("/api/v1/push/rules", service).await;
            let id = list["items"][0]["id"].as_str().expect("id").to_string();
            let (_, ev) = s.get(&format!("/api/v1/push/rules/{id}/events?limit=1000"), service).await;
            ev["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        }
    };
    upsert(&[(&a, "张三", "441402"), (&b, "李四", "441403"), (&d, "赵六", "441402")]).await;
    let (code, v) = s.post("/api/v1/push/rules", &service, rule_over_residents(None, |_| {})).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let st = evaluated(1).await;
    assert_eq!((st["read"].as_str(), st["matched"].as_i64()), (Some("all"), Some(2)), "{st}");

    // A changed name, a move into the county, a newcomer: each one event, from the changed rows only.
    let v = upsert(&[(&a, "章三", "441402"), (&b, "李四", "441402"), (&c, "王五", "441402")]).await;
    let st = evaluated(v).await;
    assert_eq!(
        (st["read"].as_str(), st["matched"].as_i64(), st["last_events"].as_i64()),
        (Some("changes"), Some(4), Some(3)),
        "{st}"
    );
    // The same rows again: nothing new. A move out: no longer matching, no event.
    let v = upsert(&[(&b, "李四", "441402")]).await;
    let st = evaluated(v).await;
    assert_eq!(
        (st["read"].as_str(), st["matched"].as_i64(), st["last_events"].as_i64()),
        (Some("changes"), Some(4), Some(0)),
        "{st}"
    );
    let v = upsert(&[(&a, "章三", "441403")]).await;
    let st = evaluated(v).await;
    assert_eq!(
        (st["read"].as_str(), st["matched"].as_i64(), st["last_events"].as_i64()),
        (Some("changes"), Some(3), Some(0)),
        "{st}"
    );
    // Back in: pushed again.
    let v = upsert(&[(&a, "章三", "441402")]).await;
    let st = evaluated(v).await;
    assert_eq!((st["matched"].as_i64(), st["last_events"].as_i64()), (Some(4), Some(1)), "{st}");
    let mut got = events().await;
    got.sort();
    assert_eq!(got, vec!["张*", "李*", "王*", "章*", "章*", "赵*"]);

    // A full evaluation agrees with what the changes built up.
    let (_, list) = s.get("/api/v1/push/rules", &service).await;
    let id = list["items"][0]["id"].as_str().expect("id").to_string();
    let e = run(&s, &service, &id).await;
    assert_eq!((e["matched"].as_u64(), e["events"].as_u64(), e["gone"].as_u64()), (Some(4), Some(0), Some(0)), "{e}");

    // A replace is read in full.
    let v = {
        let (code, r) = s
            .upload(
                "/api/v1/datasets/gongan.residents/versions?mode=replace",
                &steward,
                "text/csv",
                csv(&[(&a, "章三", "441402")]),
                &[],
            )
            .await;
        assert_eq!(code, StatusCode::CREATED, "{r}");
        r["version"].as_i64().expect("version")
    };
    let st = evaluated(v).await;
    assert_eq!(
        (st["read"].as_str(), st["matched"].as_i64(), st["last_events"].as_i64()),
        (Some("all"), Some(1), Some(0)),
        "{st}"
    );
}
