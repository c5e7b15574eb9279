//! HTTPS and mutual TLS: the server's certificate from `gdx certs init`,
//! client certificates that stand for principals, certificates the server
//! must refuse, and a renewed certificate served without a restart.

use gdx_tests::{ADMIN, TestServer, https_client};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn me(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<(StatusCode, Value), reqwest::Error> {
    let mut req = client.get(format!("{url}/api/v1/me"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn setup_principals(s: &TestServer) {
    let (st, _) = s.post("/api/v1/departments", ADMIN, json!({"id": "renshe", "name": "人社局"})).await;
    assert_eq!(st, StatusCode::CREATED);
    for id in ["svc", "other"] {
        let (st, v) = s
            .post(
                "/api/v1/principals",
                ADMIN,
                json!({"id": id, "name": id, "department": "renshe", "roles": ["service"], "kind": "service"}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
}

#[tokio::test]
async fn https_serves_only_clients_that_trust_its_ca_and_no_plain_http() {
    let s = TestServer::start_tls(&[]).await;
    let url = s.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (st, v) = s.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"status": "ok"})));

    // A client that does not trust the CA gets no answer.
    let stranger = reqwest::Client::builder().tls_certs_only([]).build().expect("test step");
    assert!(stranger.get(format!("{url}/healthz")).send().await.is_err());
    // Plain HTTP on the HTTPS port gets no HTTP answer either.
    let plain = url.replacen("https://", "http://", 1);
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    // TLS 1.2 is still accepted; the CLI's client connects with the CA it is given.
    let tls12 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(s.certs().join("ca.pem")).expect("test step"))
            .expect("test step")])
        .tls_version_max(reqwest::tls::Version::TLS_1_2)
        .build()
        .expect("test step");
    assert_eq!(tls12.get(format!("{url}/healthz")).send().await.expect("request").status(), StatusCode::OK);
    let tls = gdx_exchange::cli::ClientTls { ca_cert: Some(s.certs().join("ca.pem")), ..Default::default() };
    let cli = gdx_exchange::cli::Client::with_tls(&url, Some(ADMIN.into()), &tls).expect("test step");
    assert_eq!(cli.get("/api/v1/me", &[]).await.expect("request")["principal"]["id"], "admin");
}

#[tokio::test]
async fn a_registered_client_certificate_authenticates_without_a_token() {
    let s = TestServer::start_tls(&["svc", "other"]).await;
    setup_principals(&s).await;
    let url = s.url();
    let ca = s.certs().join("ca.pem");
    let svc = https_client(&ca, Some("svc"));
    let other = https_client(&ca, Some("other"));

    // A valid certificate that no principal registered: 401.
    assert_eq!(me(&svc, &url, None).await.expect("request").0, StatusCode::UNAUTHORIZED);

    // By subject common name.
    let (st, v) = s.post("/api/v1/principals/svc/certificates", ADMIN, json!({"subject": "svc"})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["certificate"], "subject:svc");
    let by_subject = v["id"].as_str().expect("test step").to_string();
    assert!(by_subject.starts_with("crt_"), "{v}");
    let (st, v) = me(&svc, &url, None).await.expect("request");
    assert_eq!((st, v["principal"]["id"].clone()), (StatusCode::OK, json!("svc")), "{v}");
    // The other certificate is still nobody's.
    assert_eq!(me(&other, &url, None).await.expect("request").0, StatusCode::UNAUTHORIZED);

    // By fingerprint, written with colons and in capitals as tools print it.
    let fp = gdx_exchange::certs::fingerprint_of(&s.certs().join("other.pem")).expect("test step");
    let pretty =
        fp.as_bytes().chunks(2).map(|c| std::str::from_utf8(c).expect("test step").to_uppercase()).collect::<Vec<_>>();
    let (st, v) =
        s.post("/api/v1/principals/other/certificates", ADMIN, json!({"fingerprint": pretty.join(":")})).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["certificate"], format!("sha256:{fp}"));
    assert_eq!(me(&other, &url, None).await.expect("request").1["principal"]["id"], "other");

    // A bearer token, when given, decides.
    assert_eq!(me(&svc, &url, Some(ADMIN)).await.expect("request").1["principal"]["id"], "admin");
    // What a certificate is registered by is no bearer secret.
    assert_eq!(me(&s_client(&s), &url, Some("subject:svc")).await.expect("request").0, StatusCode::UNAUTHORIZED);

    // The binding is listed with the principal's tokens, and revoked like one.
    let (_, list) = s.get("/api/v1/principals/svc/tokens", ADMIN).await;
    assert!(
        list["items"]
            .as_array()
            .expect("test step")
            .iter()
            .any(|t| t["id"] == by_subject.as_str() && t["certificate"] == "subject:svc")
    );
    let (st, _) = s.call(reqwest::Method::DELETE, &format!("/api/v1/tokens/{by_subject}"), Some(ADMIN), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(me(&svc, &url, None).await.expect("request").0, StatusCode::UNAUTHORIZED);

    // Bad input.
    for body in [
        json!({"fingerprint": fp, "subject": "svc"}),
        json!({}),
        json!({"fingerprint": "abc"}),
        json!({"subject": ""}),
        json!({"subject": "a\nb"}),
        json!({"subject": "svc", "expires_at": "2020-01-01T00:00:00Z"}),
    ] {
        let (st, v) = s.post("/api/v1/principals/svc/certificates", ADMIN, body.clone()).await;
        assert_eq!(
            (st, v["code"].clone()),
            (StatusCode::UNPROCESSABLE_ENTITY, json!("validation_failed")),
            "{body} → {v}"
        );
    }
    let (st, _) = s.post("/api/v1/principals/nobody/certificates", ADMIN, json!({"subject": "x"})).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // Only administrators register certificates.
    let (_, t) = s.post("/api/v1/principals/svc/tokens", ADMIN, json!({})).await;
    let (st, _) = s
        .post("/api/v1/principals/svc/certificates", t["token"].as_str().expect("test step"), json!({"subject": "x"}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

fn s_client(s: &TestServer) -> reqwest::Client {
    https_client(&s.certs().join("ca.pem"), None)
}

#[tokio::test]
async fn certificates_of_another_ca_and_expired_ones_fail_the_handshake() {
    let s = TestServer::start_tls(&["svc"]).await;
    setup_principals(&s).await;
    let (st, _) = s.post("/api/v1/principals/svc/certificates", ADMIN, json!({"subject": "svc"})).await;
    assert_eq!(st, StatusCode::CREATED);
    let url = s.url();

    // A certificate for the same name from another CA.
    let elsewhere = s.scratch().join("elsewhere");
    gdx_exchange::certs::init(&elsewhere, &["localhost".into()], &["svc".into()], false).expect("test step");
    let mut pem = std::fs::read(elsewhere.join("svc.pem")).expect("read file");
    pem.extend(std::fs::read(elsewhere.join("svc.key")).expect("read file"));
    let forged = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&std::fs::read(s.certs().join("ca.pem")).expect("test step"))
            .expect("test step")])
        .identity(reqwest::Identity::from_pem(&pem).expect("test step"))
        .build()
        .expect("test step");
    assert!(me(&forged, &url, None).await.is_err(), "a certificate of another CA is refused");

    // One of the right CA, for the right name, but expired.
    let now = chrono::Utc::now();
    let expired = s.scratch().join("expired");
    std::fs::create_dir_all(&expired).expect("test step");
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(s.certs().join(f), expired.join(f)).expect("test step");
    }
    gdx_exchange::certs::issue_client(
        &expired,
        "svc",
        now - chrono::Duration::days(30)..now - chrono::Duration::days(2),
    )
    .expect("test step");
    let old = https_client(&expired.join("ca.pem"), Some("svc"));
    assert!(me(&old, &url, None).await.is_err(), "an expired certificate is refused");
    // A fresh one from the same CA works.
    gdx_exchange::certs::issue_client_for_a_year(&expired, "svc").expect("test step");
    let fresh = https_client(&expired.join("ca.pem"), Some("svc"));
    assert_eq!(me(&fresh, &url, None).await.expect("request").1["principal"]["id"], "svc");
}

#[tokio::test]
async fn renewed_certificates_are_served_without_a_restart() {
    let s = TestServer::start_tls(&["svc"]).await;
    let url = s.url();
    let old_ca = s.scratch().join("old-ca.pem");
    std::fs::copy(s.certs().join("ca.pem"), &old_ca).expect("test step");
    // A new CA and server certificate in place of the old.
    gdx_exchange::certs::init(&s.certs(), &["127.0.0.1".into()], &[], true).expect("test step");
    let new_client = https_client(&s.certs().join("ca.pem"), None);
    let old_client = https_client(&old_ca, None);
    assert_eq!(old_client.get(format!("{url}/healthz")).send().await.expect("request").status(), StatusCode::OK);
    s.reload_tls().expect("test step");
    // New connections get the new certificate (each client here opens its own).
    assert_eq!(new_client.get(format!("{url}/healthz")).send().await.expect("request").status(), StatusCode::OK);
    assert!(https_client(&old_ca, None).get(format!("{url}/healthz")).send().await.is_err());

    // A broken file is not taken: the certificate in force stays.
    std::fs::write(s.certs().join("server.key"), "not a key").expect("test step");
    let e = s.reload_tls().expect_err("a broken key is not taken");
    assert!(e.contains("TLS key"), "the error names the file: {e}");
    assert_eq!(
        https_client(&s.certs().join("ca.pem"), None)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .expect("request")
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn plain_http_beyond_loopback_needs_to_be_asked_for() {
    gdx_exchange::install_crypto_provider();
    let dir = tempfile::tempdir().expect("test step");
    let mut c = gdx_tests::config(&dir.path().join("data"));
    c.listen = "0.0.0.0:0".parse().expect("test step");
    let e = gdx_exchange::App::start(c.clone()).await.expect_err("refused").to_string();
    assert!(e.contains("--insecure-http"), "{e}");
    // Missing certificate files are named.
    c.tls_cert = Some(dir.path().join("missing.pem"));
    c.tls_key = Some(dir.path().join("missing.key"));
    let e = gdx_exchange::App::start(c).await.expect_err("refused").to_string();
    assert!(e.contains("missing.pem"), "{e}");
}
