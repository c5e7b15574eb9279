//! The foundation: identities, the catalogue, route
//! authorisation, bad input, restart, backup and restore, against the real
//! server on loopback.

use gdx_tests::{ADMIN, TestServer, population};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn ids(v: &Value) -> Vec<String> {
    v["items"].as_array().expect("items").iter().map(|d| d["id"].as_str().expect("id").to_string()).collect()
}

fn fields(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .map(|a| a.iter().map(|e| e["field"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn steward_registers_analyst_finds_by_chinese_word_and_restart_keeps_everything() {
    let mut s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("minzheng", "梅州市民政局", "441400").await;
    let steward = s.principal("steward1", "gongan", &["steward"]).await;
    let analyst = s.principal("analyst1", "gongan", &["analyst"]).await;
    let outsider = s.principal("analyst2", "minzheng", &["analyst"]).await;

    let (st, me) = s.get("/api/v1/me", &steward).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["principal"]["id"], "steward1");
    assert_eq!(me["department"]["id"], "gongan");
    assert_eq!(me["roles"], json!(["steward"]));

    let (st, d) = s.post("/api/v1/datasets", &steward, population("gongan", "population", "1-01-001-0001")).await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    assert_eq!(d["id"], "gongan.population");
    assert_eq!(d["status"], "active");
    assert_eq!(d["current_version"], Value::Null);
    assert_eq!(d["format"], "table");
    assert_eq!(d["open"], false);
    assert_eq!(d["access"], "read");
    assert_eq!(d["columns"][4]["type"], "decimal(12,2)");
    assert_eq!(d["columns"][2]["nullable"], true);
    assert!(d["published_on"].as_str().is_some_and(|p| p.len() == 10));

    // Another dataset that must not match the searches below.
    let mut vehicles = population("gongan", "vehicles", "1-01-002-0001");
    vehicles["title"] = json!("机动车登记信息");
    vehicles["category"] = json!("交通");
    vehicles["description"] = json!("机动车号牌与登记状态");
    vehicles["columns"] = json!([{"name": "plate", "type": "string", "nullable": false, "title": "号牌号码"}]);
    vehicles["primary_key"] = json!(["plate"]);
    vehicles["sharing"] = json!("conditional");
    vehicles["sharing_condition"] = json!("仅用于交通执法");
    let (st, v) = s.post("/api/v1/datasets", &steward, vehicles).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");

    // The analyst of another department finds it by a two-character Chinese word.
    let (st, found) = s.get("/api/v1/datasets?q=人口", &outsider).await;
    assert_eq!(st, StatusCode::OK, "{found}");
    assert_eq!(ids(&found), vec!["gongan.population"]);
    assert_eq!(found["items"][0]["access"], "read");
    assert_eq!(found["next_page_token"], Value::Null);
    // ...by a column title, by a longer word, and with filters.
    assert_eq!(ids(&s.get("/api/v1/datasets?q=%E8%BA%AB%E4%BB%BD", &outsider).await.1), vec!["gongan.population"]);
    assert_eq!(ids(&s.get("/api/v1/datasets?q=户籍人口", &outsider).await.1), vec!["gongan.population"]);
    assert_eq!(ids(&s.get("/api/v1/datasets?q=号牌", &outsider).await.1), vec!["gongan.vehicles"]);
    assert!(ids(&s.get("/api/v1/datasets?q=人口&sharing=conditional", &outsider).await.1).is_empty());
    assert_eq!(ids(&s.get("/api/v1/datasets?sharing=conditional", &outsider).await.1), vec!["gongan.vehicles"]);
    assert_eq!(ids(&s.get("/api/v1/datasets?department=gongan&classification=basic", &outsider).await.1).len(), 2);
    assert!(ids(&s.get("/api/v1/datasets?department=minzheng", &outsider).await.1).is_empty());
    assert_eq!(s.get("/api/v1/datasets/gongan.vehicles", &outsider).await.1["access"], "requestable");

    // The analyst cannot register one: 403, nothing stored.
    let (st, p) = s.post("/api/v1/datasets", &analyst, population("gongan", "other", "1-01-003-0001")).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{p}");
    assert_eq!(p["code"], "access_denied");
    // A steward cannot register for another department.
    let (st, _) = s.post("/api/v1/datasets", &steward, population("minzheng", "other", "1-01-003-0001")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // The analyst cannot edit either; an admin can register for any department.
    assert_eq!(
        s.patch("/api/v1/datasets/gongan.population", &analyst, json!({"title": "x"})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(s.post("/api/v1/departments", &steward, json!({"id": "x", "name": "x"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get("/api/v1/principals", &analyst).await.0, StatusCode::FORBIDDEN);
    let mut families = population("minzheng", "families", "2-01-001-0001");
    families["title"] = json!("低保家庭信息");
    families["description"] = json!("最低生活保障家庭");
    families["category"] = json!("社会救助");
    families["columns"] = json!([{"name": "family_id", "type": "string", "nullable": false, "title": "家庭编号"}]);
    families["primary_key"] = json!(["family_id"]);
    let (st, _) = s.post("/api/v1/datasets", ADMIN, families).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(ids(&s.get("/api/v1/datasets", &analyst).await.1).len(), 3);

    // Restart keeps everything: departments, principals, tokens, datasets, the search index.
    s.restart().await;
    let (st, found) = s.get("/api/v1/datasets?q=人口", &outsider).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(ids(&found), vec!["gongan.population"]);
    let (_, d) = s.get("/api/v1/datasets/gongan.population", &steward).await;
    assert_eq!(d["title"], "户籍人口基础信息");
    assert_eq!(d["columns"].as_array().map(Vec::len), Some(5));
    assert_eq!(ids(&s.get("/api/v1/departments", &analyst).await.1), vec!["gongan", "minzheng"]);
    let (_, ps) = s.get("/api/v1/principals?department=gongan", ADMIN).await;
    assert_eq!(ids(&ps), vec!["analyst1", "steward1"]);
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_stores_nothing() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("steward1", "gongan", &["steward"]).await;

    // Departments.
    for (body, field) in [
        (json!({"id": "Gongan", "name": "x"}), "id"),
        (json!({"id": "gdx", "name": "x"}), "id"),
        (json!({"id": "information_schema", "name": "x"}), "id"),
        (json!({"name": "x"}), "id"),
        (json!({"id": "ok1"}), "name"),
        (json!({"id": "ok1", "name": "x", "region": "4414"}), "region"),
        (json!({"id": "ok1", "name": "x", "org_code": "123456789"}), "org_code"),
        (json!({"id": "ok1", "name": "x", "parent": "nope"}), "parent"),
        (json!({"id": "ok1", "name": "x", "colour": "red"}), "colour"),
        (json!({"id": 5, "name": "x"}), "id"),
    ] {
        let (st, p) = s.post("/api/v1/departments", ADMIN, body.clone()).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {p}");
        assert_eq!(p["code"], "validation_failed");
        assert!(p["detail"].as_str().is_some_and(|d| d.contains(field)), "{body} -> {p}");
    }
    let (st, p) = s.post("/api/v1/departments", ADMIN, json!({"id": "gongan", "name": "again"})).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    assert_eq!(s.get("/api/v1/departments", ADMIN).await.1["items"].as_array().map(Vec::len), Some(1));

    // Datasets.
    let base = population("gongan", "population", "1-01-001-0001");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (with(&|v| v["name"] = json!("Bad-Name")), "name"),
        (with(&|v| v["name"] = json!("public")), "name"),
        (with(&|v| v["columns"][1]["type"] = json!("varchar(10)")), "columns[1].type"),
        (with(&|v| v["columns"][1]["name"] = json!("id_number")), "columns[1].name"),
        (with(&|v| v["primary_key"] = json!(["nope"])), "primary_key[0]"),
        (with(&|v| v["primary_key"] = json!(["birth_date"])), "primary_key[0]"),
        (with(&|v| v["sharing"] = json!("conditional")), "sharing_condition"),
        (with(&|v| v["sharing"] = json!("sometimes")), "sharing"),
        (with(&|v| v["classification"] = json!("misc")), "classification"),
        (with(&|v| v["update_cycle"] = json!("hourly")), "update_cycle"),
        (with(&|v| v["published_on"] = json!("2026/01/02")), "published_on"),
        (with(&|v| v["columns"][0]["sensitivity"] = json!("top")), "columns[0].sensitivity"),
        (with(&|v| v["related"] = json!(["not a code"])), "related[0]"),
        (with(&|v| v["columns"] = json!([])), "columns"),
        (
            with(&|v| {
                v.as_object_mut().map(|o| o.remove("title"));
            }),
            "title",
        ),
        (with(&|v| v["open"] = json!("yes")), "open"),
    ];
    for (body, field) in cases {
        let (st, p) = s.post("/api/v1/datasets", &steward, body).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {p}");
        assert_eq!(p["code"], "validation_failed");
        let named = fields(&p).iter().any(|f| f == field) || p["detail"].as_str().is_some_and(|d| d.contains(field));
        assert!(named, "expected {field} in {p}");
        assert!(p["error_count"].as_u64().is_some_and(|n| n >= 1), "{p}");
    }
    // An unknown provider department (an admin may register for any department).
    let (st, p) = s.post("/api/v1/datasets", ADMIN, with(&|v| v["department"] = json!("nope"))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(fields(&p), vec!["department"]);
    // Several problems are reported together.
    let (_, p) = s
        .post(
            "/api/v1/datasets",
            &steward,
            with(&|v| {
                v["title"] = json!("");
                v["sharing"] = json!("x");
                v["primary_key"] = json!([]);
            }),
        )
        .await;
    assert_eq!(p["error_count"], 3, "{p}");
    assert!(s.get("/api/v1/datasets?status=all", &steward).await.1["items"].as_array().is_some_and(Vec::is_empty));

    // Duplicates: 409.
    assert_eq!(s.post("/api/v1/datasets", &steward, base.clone()).await.0, StatusCode::CREATED);
    let (st, p) = s.post("/api/v1/datasets", &steward, base.clone()).await;
    assert_eq!((st, p["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let (st, p) = s.post("/api/v1/datasets", &steward, with(&|v| v["name"] = json!("other"))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("resource_code")), "{p}");

    // Malformed JSON: 400; wrong media type: 415; oversized: 413; bad paging: 422.
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/api/v1/datasets", s.url()))
        .bearer_auth(&steward)
        .header("content-type", "application/json")
        .body("{\"department\": ")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp =
        http.post(format!("{}/api/v1/datasets", s.url())).bearer_auth(&steward).body("x").send().await.expect("sent");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = json!({"department": "gongan", "description": "长".repeat(600_000)});
    assert_eq!(s.post("/api/v1/datasets", &steward, big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.get("/api/v1/datasets?limit=0", &steward).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.get("/api/v1/datasets?limit=abc", &steward).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.get("/api/v1/datasets?page_token=zzz", &steward).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.get("/api/v1/datasets?sharing=sometimes", &steward).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    // Principals.
    for (body, field) in [
        (json!({"name": "x", "department": "gongan", "roles": ["superuser"]}), "roles[0]"),
        (json!({"name": "x", "department": "gongan", "roles": []}), "roles"),
        (json!({"name": "x", "department": "nope", "roles": ["analyst"]}), "department"),
        (json!({"name": "x", "department": "gongan", "roles": ["analyst"], "kind": "robot"}), "kind"),
        (json!({"name": "x", "department": "gongan", "roles": ["analyst"], "id": "Bad Id"}), "id"),
    ] {
        let (st, p) = s.post("/api/v1/principals", ADMIN, body.clone()).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {p}");
        assert!(p["detail"].as_str().is_some_and(|d| d.contains(field)), "{body} -> {p}");
    }
    assert_eq!(
        s.post(
            "/api/v1/principals",
            ADMIN,
            json!({"id": "steward1", "name": "x", "department": "gongan", "roles": ["analyst"]})
        )
        .await
        .0,
        StatusCode::CONFLICT
    );

    // Unknown objects and routes.
    assert_eq!(s.get("/api/v1/datasets/gongan.nope", &steward).await.1["code"], "not_found");
    assert_eq!(s.get("/api/v1/departments/nope", &steward).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/api/v1/nothing", &steward).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call(Method::PUT, "/api/v1/datasets", Some(&steward), None).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn tokens_are_shown_once_and_revocation_expiry_and_disabling_take_effect() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let token = s.principal("svc1", "gongan", &["service"]).await;

    // Missing, malformed, unknown tokens: 401.
    assert_eq!(s.call(Method::GET, "/api/v1/me", None, None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/api/v1/me", "gdx_not_a_real_token_at_all_000000").await.0, StatusCode::UNAUTHORIZED);
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/me", s.url()))
        .header("authorization", format!("Basic {token}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    // A second token, listed without its secret; revoking it ends it at once.
    let (st, t2) = s.post("/api/v1/principals/svc1/tokens", ADMIN, json!({})).await;
    assert_eq!(st, StatusCode::CREATED, "{t2}");
    let secret = t2["token"].as_str().expect("secret").to_string();
    assert_eq!(s.get("/api/v1/me", &secret).await.0, StatusCode::OK);
    let (_, list) = s.get("/api/v1/principals/svc1/tokens", ADMIN).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
    assert!(!list.to_string().contains(&secret));
    let id = t2["id"].as_str().expect("id");
    assert_eq!(
        s.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), Some(ADMIN), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.get("/api/v1/me", &secret).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.get("/api/v1/me", &token).await.0, StatusCode::OK);
    assert_eq!(s.call(Method::DELETE, "/api/v1/tokens/tok_nope", Some(ADMIN), None).await.0, StatusCode::NOT_FOUND);

    // Expiry: in the past is refused; a token past its expiry is refused.
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        s.post("/api/v1/principals/svc1/tokens", ADMIN, json!({"expires_at": past})).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let (st, t3) = s.post("/api/v1/principals/svc1/tokens", ADMIN, json!({"expires_at": soon})).await;
    assert_eq!(st, StatusCode::CREATED);
    let short = t3["token"].as_str().expect("secret").to_string();
    assert_eq!(s.get("/api/v1/me", &short).await.0, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    assert_eq!(s.get("/api/v1/me", &short).await.0, StatusCode::UNAUTHORIZED);

    // Re-roling changes what the principal may do; disabling shuts it out.
    assert_eq!(s.post("/api/v1/datasets", &token, population("gongan", "p", "9-1")).await.0, StatusCode::FORBIDDEN);
    let (st, p) = s.patch("/api/v1/principals/svc1", ADMIN, json!({"roles": ["service", "steward"]})).await;
    assert_eq!(st, StatusCode::OK, "{p}");
    assert_eq!(p["roles"], json!(["service", "steward"]));
    assert_eq!(s.post("/api/v1/datasets", &token, population("gongan", "p", "9-1")).await.0, StatusCode::CREATED);
    assert_eq!(s.patch("/api/v1/principals/svc1", ADMIN, json!({"disabled": true})).await.0, StatusCode::OK);
    assert_eq!(s.get("/api/v1/me", &token).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.patch("/api/v1/principals/svc1", ADMIN, json!({"disabled": false})).await.0, StatusCode::OK);
    assert_eq!(s.get("/api/v1/me", &token).await.0, StatusCode::OK);
    // The bootstrap administrator cannot be locked out.
    assert_eq!(
        s.patch("/api/v1/principals/admin", ADMIN, json!({"disabled": true})).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(s.patch("/api/v1/principals/nope", ADMIN, json!({"disabled": true})).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn datasets_are_edited_extended_and_retired_by_their_steward() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("minzheng", "梅州市民政局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let other = s.principal("st2", "minzheng", &["steward"]).await;
    let analyst = s.principal("an", "minzheng", &["analyst"]).await;
    assert_eq!(
        s.post("/api/v1/datasets", &steward, population("gongan", "population", "1-01")).await.0,
        StatusCode::CREATED
    );
    let path = "/api/v1/datasets/gongan.population";

    let (st, d) =
        s.patch(path, &steward, json!({"title": "户籍人口信息（更新）", "update_cycle": "weekly", "open": true})).await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(
        (d["title"].as_str(), d["update_cycle"].as_str(), d["open"].as_bool()),
        (Some("户籍人口信息（更新）"), Some("weekly"), Some(true))
    );
    assert_eq!(ids(&s.get("/api/v1/datasets?q=更新", &analyst).await.1), vec!["gongan.population"]);
    assert_eq!(ids(&s.get("/api/v1/datasets?open=true", &analyst).await.1), vec!["gongan.population"]);

    let mut columns = d["columns"].clone();
    let cols = columns.as_array_mut().expect("columns");
    cols.push(
        json!({"name": "phone", "type": "string", "title": "联系电话", "sensitivity": "personal", "semantic": "phone"}),
    );
    let (st, d) = s.patch(path, &steward, json!({"columns": columns.clone()})).await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(d["columns"].as_array().map(Vec::len), Some(6));
    assert_eq!(ids(&s.get("/api/v1/datasets?q=联系电话", &analyst).await.1), vec!["gongan.population"]);

    let mut bad = columns.clone();
    bad.as_array_mut().expect("array").push(json!({"name": "email", "type": "string", "nullable": false}));
    let (st, p) = s.patch(path, &steward, json!({"columns": bad})).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(fields(&p).contains(&"columns[6].nullable".to_string()), "{p}");
    let mut retyped = columns.clone();
    retyped[2]["type"] = json!("string");
    assert_eq!(s.patch(path, &steward, json!({"columns": retyped})).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        s.patch(path, &steward, json!({"columns": [columns[0].clone()]})).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(s.patch(path, &steward, json!({"sharing": "conditional"})).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.patch(path, &steward, json!({"status": "gone"})).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.patch(path, &steward, json!({"name": "renamed"})).await.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(s.get(path, &steward).await.1["columns"].as_array().map(Vec::len), Some(6));

    // Another department's steward: 403, whether or not the dataset exists.
    assert_eq!(s.patch(path, &other, json!({"title": "x"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.patch("/api/v1/datasets/gongan.nope", &other, json!({"title": "x"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.patch("/api/v1/datasets/gongan.nope", &steward, json!({"title": "x"})).await.0, StatusCode::NOT_FOUND);

    // Versions: none until the first push.
    let (st, v) = s.get(&format!("{path}/versions"), &analyst).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, json!({"items": [], "next_page_token": null}));

    // Retiring hides it from the default listing and from other departments' readers.
    let (st, d) = s.patch(path, &steward, json!({"status": "retired"})).await;
    assert_eq!((st, d["status"].as_str()), (StatusCode::OK, Some("retired")));
    assert!(ids(&s.get("/api/v1/datasets?q=人口", &analyst).await.1).is_empty());
    assert_eq!(ids(&s.get("/api/v1/datasets?q=人口&status=retired", &analyst).await.1), vec!["gongan.population"]);
    assert_eq!(ids(&s.get("/api/v1/datasets?status=all", &analyst).await.1).len(), 1);
    assert_eq!(s.get(path, &analyst).await.1["access"], "none");
    assert_eq!(s.get(path, &steward).await.1["access"], "read");
}

#[tokio::test]
async fn lists_page_with_tokens() {
    let s = TestServer::start().await;
    for i in 0..7 {
        s.department(&format!("dep{i}"), &format!("部门{i}"), "441400").await;
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/departments?limit=3".to_string();
    loop {
        let (st, page) = s.get(&path, ADMIN).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        let got = ids(&page);
        assert!(got.len() <= 3);
        seen.extend(got);
        match page["next_page_token"].as_str() {
            Some(t) => path = format!("/api/v1/departments?limit=3&page_token={t}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| format!("dep{i}")).collect::<Vec<_>>());
    assert_eq!(s.get("/api/v1/departments?limit=1001", ADMIN).await.0, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn anonymous_routes_openapi_and_metrics() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let analyst = s.principal("an", "gongan", &["analyst"]).await;
    let auditor = s.principal("au", "gongan", &["auditor"]).await;

    let (st, h) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((st, h), (StatusCode::OK, json!({"status": "ok"})));

    let (st, doc) = s.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{}", doc["openapi"]);
    for path in ["/api/v1/datasets", "/api/v1/datasets/{id}", "/api/v1/principals", "/api/v1/me", "/healthz"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["NewDataset"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Operation ids are unique and every response is described (OpenAPI requires both).
    let mut operation_ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(operation_ids.insert(id.clone()), "{method} {path}: operationId '{id}' is not unique");
            for (status, resp) in op["responses"].as_object().expect("responses") {
                assert!(resp["description"].is_string(), "{method} {path} {status} has no description");
            }
        }
    }

    // Every route of the router is in the document, and nothing else is anonymous.
    for path in ["/api/v1/me", "/api/v1/datasets", "/api/v1/departments", "/metrics"] {
        assert_eq!(s.call(Method::GET, path, None, None).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(s.get("/metrics", &analyst).await.0, StatusCode::FORBIDDEN);
    let (st, text) = s.get("/metrics", &auditor).await;
    assert_eq!(st, StatusCode::OK);
    let text = text.as_str().expect("text").to_string();
    assert!(text.contains("gdx_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/api/v1/departments\""), "{text}");
    // The audit writer's commits: their time, their size, and the longest
    // wait of a record from queued to durable.
    for name in ["gdx_audit_commit_seconds", "gdx_audit_batch_records", "gdx_audit_wait_seconds"] {
        assert!(text.contains(&format!("{name}_count")), "{name} missing: {text}");
    }
    // Labels carry route templates, never concrete paths.
    s.get("/api/v1/datasets/gongan.secretkey", &analyst).await;
    let (_, text) = s.get("/metrics", ADMIN).await;
    assert!(!text.as_str().expect("text").contains("secretkey"));
}

#[tokio::test]
async fn backup_while_serving_restores_into_a_working_server() {
    let mut s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    assert_eq!(
        s.post("/api/v1/datasets", &steward, population("gongan", "population", "1-01")).await.0,
        StatusCode::CREATED
    );
    // A lake folder with a Delta log and a data file, as the lake lays them out.
    let table = s.data_dir().join("lake/gongan/population");
    std::fs::create_dir_all(table.join("_delta_log")).expect("mkdir");
    std::fs::write(table.join("_delta_log/00000000000000000000.json"), b"{\"commitInfo\":{}}\n").expect("write");
    std::fs::write(table.join("part-00000.parquet"), b"PAR1 data").expect("write");

    let archive = s.scratch().join("backup.tar");
    let mut lines = Vec::new();
    let manifest =
        gdx_exchange::backup::backup(&s.data_dir(), &archive, &mut |m| lines.push(m.to_string())).expect("backup");
    assert!(manifest.files.iter().any(|f| f.path == "meta.db"));
    assert!(manifest.files.iter().any(|f| f.path == "lake/gongan/population/_delta_log/00000000000000000000.json"));
    assert!(!manifest.files.iter().any(|f| f.path.contains("admin.token")));
    assert!(!lines.is_empty(), "progress is reported");

    // Written after the backup: not in it.
    assert_eq!(
        s.post("/api/v1/datasets", &steward, population("gongan", "later", "1-02")).await.0,
        StatusCode::CREATED
    );

    // Restoring over the running server's directory is refused; into a new one it works.
    assert!(gdx_exchange::backup::restore(&s.data_dir(), &archive, true, &mut |_| {}).is_err());
    let restored = s.scratch().join("restored");
    gdx_exchange::backup::restore(&restored, &archive, false, &mut |_| {}).expect("restore");
    assert!(restored.join("lake/gongan/population/part-00000.parquet").is_file());
    // Restoring again without --force refuses to overwrite.
    assert!(gdx_exchange::backup::restore(&restored, &archive, false, &mut |_| {}).is_err());

    s.start_on(&restored).await;
    let (st, d) = s.get("/api/v1/datasets/gongan.population", &steward).await;
    assert_eq!(st, StatusCode::OK, "{d}");
    assert_eq!(s.get("/api/v1/datasets/gongan.later", &steward).await.0, StatusCode::NOT_FOUND);
    assert_eq!(ids(&s.get("/api/v1/datasets?q=人口", &steward).await.1), vec!["gongan.population"]);

    // A damaged archive is refused and leaves nothing behind.
    let mut bytes = std::fs::read(&archive).expect("read");
    let at = bytes.windows(8).position(|w| w == b"PAR1 dat").expect("data file in archive");
    bytes[at] = b'X';
    let damaged = s.scratch().join("damaged.tar");
    std::fs::write(&damaged, bytes).expect("write");
    let target = s.scratch().join("never");
    let err = gdx_exchange::backup::restore(&target, &damaged, false, &mut |_| {}).expect_err("damaged");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(!target.join("meta.db").exists());
}

#[tokio::test]
async fn one_data_directory_one_server() {
    let s = TestServer::start().await;
    let second = gdx_exchange::App::start(gdx_tests::config(&s.data_dir())).await;
    assert!(matches!(second, Err(gdx_exchange::Error::Locked { .. })), "{second:?}");
}

/// A start refused at its last step (the port is taken) leaves no task of
/// its own running, and its data directory can be served afterwards.
#[tokio::test]
async fn a_start_refused_for_a_taken_port_leaves_no_task_behind() {
    let s = TestServer::start().await;
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = alive();
    let mut config = gdx_tests::config(&s.scratch().join("second"));
    config.listen = s.url().rsplit("//").next().expect("address").parse().expect("socket address");
    let refused = gdx_exchange::App::start(config.clone()).await;
    assert!(matches!(refused, Err(gdx_exchange::Error::Bind { .. })), "{refused:?}");
    assert!(alive() <= before, "tasks left running by the refused start");
    config.listen = "127.0.0.1:0".parse().expect("loopback address");
    let second = gdx_exchange::App::start(config).await.expect("the same directory, another port");
    assert!(alive() > before);
    second.stop().await.expect("stops");
}

/// Every operation of the OpenAPI document: anonymous only where the contract
/// says so, and decided for at least one role (no route is dead or open).
#[tokio::test]
async fn every_route_is_authenticated_and_decided() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let mut tokens = vec![ADMIN.to_string()];
    for role in ["steward", "analyst", "service", "auditor"] {
        tokens.push(s.principal(&format!("p_{role}"), "gongan", &[role]).await);
    }
    let (_, doc) = s.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    let anonymous = ["/healthz", "/api/v1/openapi.json"];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let concrete = path.replace("{id}", "gongan.x");
        for (method, _) in item.as_object().expect("operations") {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body = (m != Method::GET && m != Method::DELETE).then(|| json!({}));
            let (st, _) = s.call(m.clone(), &concrete, None, body.clone()).await;
            if anonymous.contains(&path.as_str()) {
                assert_eq!(st, StatusCode::OK, "{method} {path} is anonymous");
                continue;
            }
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{method} {path} without a token");
            let mut decided = false;
            for t in &tokens {
                let (st, _) = s.call(m.clone(), &concrete, Some(t), body.clone()).await;
                assert_ne!(st, StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}");
                decided |= st != StatusCode::FORBIDDEN;
            }
            assert!(decided, "{method} {path} is denied to every role");
            checked += 1;
        }
    }
    assert!(checked >= 17, "only {checked} operations in the OpenAPI document");
}
