//! Dataset policies over HTTP: masks and row filters set by the provider's stewards.

use gdx_tests::{TestServer, population};
use reqwest::{Method, StatusCode};
use serde_json::json;

const POLICY: &str = "/api/v1/datasets/gongan.population/policy";

#[tokio::test]
async fn stewards_set_masks_and_row_filters_that_are_checked_first() {
    let s = TestServer::start().await;
    s.department("gongan", "梅州市公安局", "441400").await;
    s.department("renshe", "梅州市人社局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let other = s.principal("st2", "renshe", &["steward"]).await;
    let analyst = s.principal("an", "renshe", &["analyst"]).await;
    let (code, d) = s.post("/api/v1/datasets", &steward, population("gongan", "population", "1-01")).await;
    assert_eq!(code, StatusCode::CREATED, "{d}");

    // Before any is set: the defaults, nobody named.
    let (code, p) = s.get(POLICY, &steward).await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["masks"], json!([]));
    assert!(p["updated_by"].is_null(), "{p}");

    let policy = json!({
        "masks": [{"column": "birth_date", "mask": "year_only"}, {"column": "name", "mask": "null", "for": "role:service"}],
        "row_filters": [{"for": "renshe", "filter": "county_code = {{department.region}}"}]
    });
    let (code, p) = s.call(Method::PUT, POLICY, Some(&steward), Some(policy.clone())).await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!(p["updated_by"], "st");
    let (_, p) = s.get(POLICY, &steward).await;
    // The default audience is spelled out.
    let stored = json!([
        {"column": "birth_date", "mask": "year_only", "for": "*"},
        {"column": "name", "mask": "null", "for": "role:service"}
    ]);
    assert_eq!(p["masks"], stored);
    assert_eq!(p["row_filters"], json!([{"for": "renshe", "filter": "county_code = {{department.region}}"}]));

    // Every problem, by field; nothing stored.
    let bad = json!({
        "masks": [{"column": "nope", "mask": "redact"}],
        "row_filters": [
            {"filter": "county_code = '{{department.region}}'"},
            {"filter": "lower(county_code) = 'x'"},
            {"filter": "id_number IN (SELECT id_number FROM gongan.population)"}
        ]
    });
    let (code, p) = s.call(Method::PUT, POLICY, Some(&steward), Some(bad)).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    let fields: Vec<&str> =
        p["errors"].as_array().expect("errors").iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(
        fields,
        vec!["masks[0].column", "row_filters[0].filter", "row_filters[1].filter", "row_filters[2].filter"]
    );
    for (body, why) in [
        (json!({"masks": [{"column": "name", "mask": "sha1"}]}), "unknown mask"),
        (json!({"masks": [{"column": "name", "mask": "redact", "for": "role:king"}]}), "unknown role"),
        (json!({"masks": [], "extra": 1}), "extra"),
    ] {
        let (code, p) = s.call(Method::PUT, POLICY, Some(&steward), Some(body)).await;
        assert!(code == StatusCode::UNPROCESSABLE_ENTITY || code == StatusCode::BAD_REQUEST, "{why}: {code} {p}");
    }
    let (_, p) = s.get(POLICY, &steward).await;
    assert_eq!(p["masks"], stored, "a refused policy changes nothing");

    // Only the provider's stewards; an unknown dataset is 404 for them too.
    assert_eq!(s.get(POLICY, &other).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get(POLICY, &analyst).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.call(Method::PUT, POLICY, Some(&other), Some(json!({}))).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get("/api/v1/datasets/gongan.nothing/policy", &steward).await.0, StatusCode::NOT_FOUND);

    // An empty policy restores the defaults.
    let (code, p) = s.call(Method::PUT, POLICY, Some(&steward), Some(json!({}))).await;
    assert_eq!(code, StatusCode::OK, "{p}");
    assert_eq!((p["masks"].clone(), p["row_filters"].clone()), (json!([]), json!([])));
}
