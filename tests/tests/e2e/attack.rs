//! The attack suite, over HTTPS: every route of the router against every
//! role and against missing, revoked and malformed credentials; another
//! department's objects by id; the SQL escapes of governed queries.
//!
//! The routes come from the router's source and from the OpenAPI document,
//! which must agree, so a route added without being described (or described
//! without being routed) fails here; each one must answer 401 without a
//! credential (it passes authentication and casbin) and 403 to every role
//! the shipped route policy does not name for it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gdx_tests::{ADMIN, TestServer, conditional_population, id_number, population};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// `(path template, METHOD)` of every route in the router's source.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../../../exchange/src/api.rs");
    let mut found = BTreeSet::new();
    for line in source.lines() {
        // A line may chain several routes: each piece after `.route("` is one.
        for rest in line.split(".route(\"").skip(1) {
            let Some(end) = rest.find('"') else { continue };
            let path = &rest[..end];
            for m in ["get", "post", "put", "patch", "delete"] {
                if rest.contains(&format!(" {m}("))
                    || rest.contains(&format!(".{m}("))
                    || rest.contains(&format!("({m}("))
                {
                    found.insert((path.to_string(), m.to_uppercase()));
                }
            }
        }
    }
    found
}

/// `(path template, METHOD)` of every operation in the OpenAPI document.
fn described() -> BTreeSet<(String, String)> {
    let doc = serde_json::to_value(gdx_exchange::api::openapi_document()).expect("OpenAPI as JSON");
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in ["get", "post", "put", "patch", "delete"] {
            if item.get(m).is_some() {
                found.insert((path.clone(), m.to_uppercase()));
            }
        }
    }
    found
}

/// Which roles the shipped route policy names for each route, through the role hierarchy.
fn allowed() -> HashMap<(String, String), BTreeSet<String>> {
    let policy = include_str!("../../../policies/route_policy.csv");
    let mut parents: HashMap<String, Vec<String>> = HashMap::new();
    let mut direct: Vec<(String, String, String)> = Vec::new();
    for line in policy.lines() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        match f.as_slice() {
            ["g", child, parent] => parents.entry(child.to_string()).or_default().push(parent.to_string()),
            ["p", role, route, method, _scope] => {
                direct.push((role.to_string(), route.to_string(), method.to_string()))
            }
            _ => {}
        }
    }
    let roles = ["admin", "steward", "analyst", "service", "auditor"];
    let mut out: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for role in roles {
        // The role and every role it inherits from.
        let mut all = vec![role.to_string()];
        let mut i = 0;
        while i < all.len() {
            for p in parents.get(&all[i]).cloned().unwrap_or_default() {
                if !all.contains(&p) {
                    all.push(p);
                }
            }
            i += 1;
        }
        for (r, route, method) in &direct {
            if all.contains(r) {
                out.entry((route.clone(), method.clone())).or_default().insert(role.to_string());
            }
        }
    }
    out
}

/// A concrete path for a template: dataset ids name another department's dataset.
fn concrete(template: &str) -> String {
    let id = if template.starts_with("/api/v1/datasets/{id}") { "gongan.residents" } else { "nothing_here" };
    template
        .replace("{id}", id)
        .replace("{key}", &id_number("441402", "19800101", 1))
        .replace("{v}", "1")
        .replace("{event}", "evt_nothing")
}

#[tokio::test]
async fn every_route_is_decided_for_every_role_and_credential() {
    let routes = routed();
    let docs = described();
    assert!(routes.len() > 40, "the router's routes were found: {routes:?}");
    assert_eq!(
        routes.symmetric_difference(&docs).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes and the OpenAPI document differ"
    );
    let allowed = allowed();
    for (route, method) in allowed.keys() {
        assert!(
            routes.contains(&(route.clone(), method.clone())),
            "the route policy names a route that is not routed: {method} {route}"
        );
    }

    let s = TestServer::start_tls(&[]).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let owner = s.principal("owner", "gongan", &["steward"]).await;
    let (code, v) = s.post("/api/v1/datasets", &owner, population("gongan", "residents", "1-02")).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let mut tokens: BTreeMap<&str, String> = BTreeMap::new();
    tokens.insert("admin", ADMIN.to_string());
    for role in ["steward", "analyst", "service", "auditor"] {
        tokens.insert(role, s.principal(&format!("r_{role}"), "renshe", &[role]).await);
    }
    // A revoked token.
    let (_, issued) = s.post("/api/v1/principals/r_analyst/tokens", ADMIN, json!({})).await;
    let revoked = issued["token"].as_str().expect("token").to_string();
    let (code, _) = s
        .call(Method::DELETE, &format!("/api/v1/tokens/{}", issued["id"].as_str().expect("id")), Some(ADMIN), None)
        .await;
    assert_eq!(code, StatusCode::NO_CONTENT);

    let anonymous: BTreeSet<&str> = gdx_exchange::api::ANONYMOUS_ROUTES.iter().copied().collect();
    let mut checked = 0;
    for (route, method) in &routes {
        let path = concrete(route);
        let m = Method::from_bytes(method.as_bytes()).expect("method");
        let body = (m != Method::GET && m != Method::DELETE).then(|| json!({}));
        if anonymous.contains(route.as_str()) {
            let (code, _) = s.call(m.clone(), &path, None, None).await;
            assert_eq!(code, StatusCode::OK, "{method} {route} is anonymous");
            continue;
        }
        // No credential, a revoked one, and malformed ones: 401, nothing else.
        for bad in [None, Some(revoked.as_str()), Some("gdx_notatoken"), Some(""), Some("x y z")] {
            let (code, v) = s.call(m.clone(), &path, bad, body.clone()).await;
            assert_eq!(
                (code, v["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthenticated")),
                "{method} {route} with {bad:?}: {v}"
            );
        }
        let (code, _) = {
            let resp = s
                .http()
                .request(m.clone(), format!("{}{}", s.url(), path))
                .header("authorization", format!("Basic {ADMIN}"))
                .send()
                .await
                .expect("request");
            (resp.status(), ())
        };
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {route}: only bearer tokens are credentials");
        let may = allowed.get(&(route.clone(), method.clone())).cloned().unwrap_or_default();
        for (role, token) in &tokens {
            let (code, v) = s.call(m.clone(), &path, Some(token), body.clone()).await;
            assert!(!code.is_server_error(), "{method} {route} as {role}: {code} {v}");
            assert_ne!(code, StatusCode::UNAUTHORIZED, "{method} {route} as {role}: {v}");
            if !may.contains(*role) {
                assert_eq!(
                    (code, v["code"].as_str()),
                    (StatusCode::FORBIDDEN, Some("access_denied")),
                    "{method} {route}: the policy names no rule for {role}: {v}"
                );
            }
            if code.is_client_error() {
                assert!(v["code"].is_string() && v["detail"].is_string(), "{method} {route} as {role}: a problem: {v}");
            }
            checked += 1;
        }
    }
    assert!(checked > 200, "{checked} route × role calls");
}

#[tokio::test]
async fn another_departments_objects_are_not_found_as_if_absent() {
    let s = TestServer::start_tls(&[]).await;
    for (id, name) in [("gongan", "梅州市公安局"), ("renshe", "梅州市人社局"), ("minzheng", "梅州市民政局")]
    {
        s.department(id, name, "441400").await;
    }
    let owner = s.principal("owner", "gongan", &["steward"]).await;
    let d = conditional_population("gongan", "residents", "1-02");
    let (code, v) = s.post("/api/v1/datasets", &owner, d).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let asker = s.principal("asker", "renshe", &["analyst"]).await;
    let stranger = s.principal("stranger", "minzheng", &["analyst"]).await;
    let (code, req) = s
        .post("/api/v1/sharing-requests", &asker, json!({"dataset": "gongan.residents", "purpose": "社保待遇发放核对"}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{req}");
    let id = req["id"].as_str().expect("request id");
    let (code, _) = s.get(&format!("/api/v1/sharing-requests/{id}"), &asker).await;
    assert_eq!(code, StatusCode::OK, "the asker sees its request");
    // To a third department the request does not exist: same status and code as an unknown id.
    let (seen, v1) = s.get(&format!("/api/v1/sharing-requests/{id}"), &stranger).await;
    let (absent, v2) = s.get("/api/v1/sharing-requests/req_000000000000", &stranger).await;
    assert_eq!((seen, absent), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND), "{v1} {v2}");
    assert_eq!(v1["code"], v2["code"]);
    assert_eq!(
        v1["detail"].as_str().map(|d| d.replace(id, "?")),
        v2["detail"].as_str().map(|d| d.replace("req_000000000000", "?")),
        "the answers differ only by the id asked for"
    );
    // Nor may it act on it.
    let (code, _) = s.post(&format!("/api/v1/sharing-requests/{id}/approve"), &stranger, json!({})).await;
    assert!(code == StatusCode::NOT_FOUND || code == StatusCode::FORBIDDEN, "{code}");
    let (_, listed) = s.get("/api/v1/sharing-requests", &stranger).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(0), "{listed}");
}

#[tokio::test]
async fn sql_escapes_are_refused_over_https() {
    let s = TestServer::start_tls(&[]).await;
    s.department("gongan", "梅州市公安局", "441400").await;
    let analyst = s.principal("an", "gongan", &["analyst"]).await;
    for sql in [
        "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/gdx-attack-out.csv'",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO gongan.residents VALUES ('x')",
        "SET datafusion.execution.batch_size = 1",
        "SELECT 1; DROP TABLE gongan.residents",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO '/tmp/gdx-attack-out.csv'",
    ] {
        let (code, v) = s.post("/api/v1/query", &analyst, json!({"sql": sql})).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{sql}: {v}");
        assert!(matches!(v["code"].as_str(), Some("sql_not_allowed") | Some("invalid_query")), "{sql}: {v}");
    }
    assert!(!std::path::Path::new("/tmp/gdx-attack-out.csv").exists());
    for sql in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM gdx.audit",
        "SELECT * FROM datafusion.information_schema.df_settings",
    ] {
        let (code, v) = s.post("/api/v1/query", &analyst, json!({"sql": sql})).await;
        assert!(code == StatusCode::BAD_REQUEST || code == StatusCode::FORBIDDEN, "{sql}: {code} {v}");
        let text = v.to_string();
        assert!(!text.contains("root:") && !text.contains("datafusion.execution"), "{sql}: {v}");
    }
}
