//! Ingest: pushing versions in every format and mode, reading each back from
//! the lake, bad files, skip mode, idempotency, concurrency, limits and
//! recovery after a crash.

use std::sync::Arc;

use arrow::array::{Date32Array, Decimal128Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use gdx_tests::{ADMIN, TestServer, id_number, lake_rows, population, versions};
use reqwest::StatusCode;
use serde_json::Value;

const PATH: &str = "/api/v1/datasets/gongan.population/versions";

async fn setup(s: &TestServer) -> (String, Value) {
    s.department("gongan", "梅州市公安局", "441400").await;
    let steward = s.principal("st", "gongan", &["steward"]).await;
    let (st, d) = s.post("/api/v1/datasets", &steward, population("gongan", "population", "1-01")).await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    (steward, d)
}

fn csv(rows: &[(&str, &str, &str, &str, &str)]) -> Vec<u8> {
    let mut s = String::from("id_number,name,birth_date,county_code,income\n");
    for r in rows {
        s.push_str(&format!("{},{},{},{},{}\n", r.0, r.1, r.2, r.3, r.4));
    }
    s.into_bytes()
}

#[tokio::test]
async fn every_format_and_mode_commits_one_version_that_reads_back() {
    let s = TestServer::start().await;
    let (st, d) = setup(&s).await;
    let (a, b, c) =
        (id_number("441402", "19800101", 1), id_number("441403", "19900215", 2), id_number("441481", "19700707", 3));

    // 1: UTF-8 CSV, append, with the date forms people type.
    let body = csv(&[(&a, "张三", "1980-01-01", "441402", "1234.50"), (&b, "李四", "1990/2/15", "441403", "")]);
    let (code, v) = s.upload(PATH, &st, "text/csv", body, &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["rows_written"].as_i64(), v["row_count"].as_i64()),
        (Some(1), Some(2), Some(2))
    );
    assert!(v["bytes"].as_i64().is_some_and(|b| b > 0));

    // 2: GBK CSV with Chinese column titles as headers, append.
    let text = format!("公民身份号码,姓名,出生日期,户籍所在县区\n{c},王五,19700707,441481\n");
    let (gbk, _, _) = encoding_rs::GBK.encode(&text);
    let (code, v) = s.upload(&format!("{PATH}?mode=append"), &st, "text/csv; charset=gbk", gbk.into_owned(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!((v["version"].as_i64(), v["row_count"].as_i64()), (Some(2), Some(3)));

    // 3: NDJSON upsert: one row updated, one inserted.
    let e = id_number("441424", "20000101", 4);
    let nd = format!(
        "{{\"id_number\":\"{a}\",\"name\":\"张三丰\",\"birth_date\":\"1980-01-01\",\"county_code\":\"441402\",\"income\":99}}\n{{\"id_number\":\"{e}\",\"name\":\"赵六\",\"birth_date\":\"2000-01-01\",\"county_code\":\"441424\",\"income\":null}}\n"
    );
    let (code, v) = s.upload(&format!("{PATH}?mode=upsert"), &st, "application/x-ndjson", nd.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["rows_written"].as_i64(), v["row_count"].as_i64()),
        (Some(3), Some(2), Some(4))
    );

    // 4: Parquet, replace.
    let schema = Arc::new(Schema::new(vec![
        Field::new("id_number", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("birth_date", DataType::Date32, true),
        Field::new("income", DataType::Decimal128(12, 2), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![b.clone()])),
            Arc::new(StringArray::from(vec!["李四"])),
            Arc::new(Date32Array::from(vec![Some(7350)])),
            Arc::new(Decimal128Array::from(vec![Some(50_000)]).with_precision_and_scale(12, 2).expect("decimal")),
        ],
    )
    .expect("batch");
    let mut pq = Vec::new();
    {
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut pq, schema.clone(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }
    let (code, v) = s.upload(&format!("{PATH}?mode=replace"), &st, "application/vnd.apache.parquet", pq, &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!((v["version"].as_i64(), v["row_count"].as_i64()), (Some(4), Some(1)));

    // 5: Arrow IPC stream, append.
    let mut ipc = Vec::new();
    {
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![c.clone()])),
                Arc::new(StringArray::from(vec!["王五"])),
                Arc::new(Date32Array::from(vec![None])),
                Arc::new(Decimal128Array::from(vec![None]).with_precision_and_scale(12, 2).expect("decimal")),
            ],
        )
        .expect("batch");
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &schema).expect("writer");
        w.write(&batch).expect("write");
        w.finish().expect("finish");
    }
    let (code, v) = s.upload(PATH, &st, "application/vnd.apache.arrow.stream", ipc, &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!((v["version"].as_i64(), v["row_count"].as_i64()), (Some(5), Some(2)));

    // The catalogue lists five versions and the dataset is at the last.
    let vs = versions(&s, "gongan.population", &st).await;
    assert_eq!(vs.iter().map(|v| v["version"].as_i64().unwrap_or(0)).collect::<Vec<_>>(), vec![5, 4, 3, 2, 1]);
    assert_eq!(
        vs.iter().map(|v| v["mode"].as_str().unwrap_or("")).collect::<Vec<_>>(),
        vec!["append", "replace", "upsert", "append", "append"]
    );
    let (_, now) = s.get("/api/v1/datasets/gongan.population", &st).await;
    assert_eq!((now["current_version"].as_i64(), now["row_count"].as_i64()), (Some(5), Some(2)));

    // Time travel: every version reads back as it was committed.
    let delta = |v: i64| {
        vs.iter().find(|x| x["version"] == v).and_then(|x| x["delta_version"].as_u64()).expect("delta version")
    };
    let dir = s.data_dir();
    assert_eq!(
        lake_rows(&dir, &d, delta(1)).await,
        vec![format!("{a}|张三|1980-01-01|441402|1234.50"), format!("{b}|李四|1990-02-15|441403|∅")]
    );
    assert_eq!(lake_rows(&dir, &d, delta(2)).await.len(), 3);
    assert!(lake_rows(&dir, &d, delta(2)).await.contains(&format!("{c}|王五|1970-07-07|441481|∅")));
    let v3 = lake_rows(&dir, &d, delta(3)).await;
    assert_eq!(v3.len(), 4);
    assert!(v3.contains(&format!("{a}|张三丰|1980-01-01|441402|99.00")), "{v3:?}");
    assert!(v3.contains(&format!("{e}|赵六|2000-01-01|441424|∅")), "{v3:?}");
    assert_eq!(lake_rows(&dir, &d, delta(4)).await, vec![format!("{b}|李四|1990-02-15|∅|500.00")]);
    assert_eq!(lake_rows(&dir, &d, delta(5)).await.len(), 2);
}

#[tokio::test]
async fn a_bad_file_commits_nothing_and_lists_its_problems() {
    let s = TestServer::start().await;
    let (st, _) = setup(&s).await;
    let a = id_number("441402", "19800101", 1);
    let mut bad_id = a.clone().into_bytes();
    bad_id[17] = if bad_id[17] == b'0' { b'1' } else { b'0' };
    let bad_id = String::from_utf8(bad_id).expect("ascii");
    let body = csv(&[
        (&a, "张三", "1980-01-01", "441402", "1.5"),
        (&bad_id, "李四", "1980-02-30", "441402", "abc"),
        (&a, "", "1980-01-01", "441402", "1.234"),
    ]);
    let (code, p) = s.upload(PATH, &st, "text/csv", body, &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["code"], "validation_failed");
    let errors = p["errors"].as_array().expect("errors");
    let has = |row: u64, col: &str| errors.iter().any(|e| e["row"] == row && e["column"] == col);
    assert!(has(2, "id_number") && has(2, "birth_date") && has(2, "income"), "{p}");
    assert!(has(3, "name") && has(3, "income"), "{p}");
    assert_eq!(p["error_count"], 5, "{p}");
    assert!(versions(&s, "gongan.population", &st).await.is_empty());
    assert!(!s.data_dir().join("lake/gongan/population/_delta_log").exists());

    // Duplicate keys within the upload.
    let body = csv(&[(&a, "张三", "1980-01-01", "441402", ""), (&a, "张三", "1980-01-01", "441402", "")]);
    let (code, p) = s.upload(PATH, &st, "text/csv", body, &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["row"], 2, "{p}");
    assert!(p["errors"][0]["message"].as_str().is_some_and(|m| m.contains("duplicate")), "{p}");
    // The valid first row reached a data file while the upload was checked: it is gone again.
    let table = s.data_dir().join("lake/gongan/population");
    let data_files = std::fs::read_dir(&table)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "parquet")).count())
        .unwrap_or(0);
    assert_eq!(data_files, 0, "files of a refused push are removed");

    // Unknown and missing columns, ragged rows, unknown formats and modes.
    let (code, p) = s.upload(PATH, &st, "text/csv", b"id_number,nmae\nx,y\n".to_vec(), &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["errors"][0]["message"].as_str().is_some_and(|m| m.contains("nmae")), "{p}");
    let (code, p) = s.upload(PATH, &st, "text/csv", b"birth_date\n2020-01-01\n".to_vec(), &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["errors"][0]["message"].as_str().is_some_and(|m| m.contains("id_number")), "{p}");
    // GBK bytes sent as UTF-8: refused as a whole, naming the line.
    let (gbk, _, _) = encoding_rs::GBK.encode("张三");
    let mut mislabelled = format!("id_number,name,birth_date,county_code\n{a},").into_bytes();
    mislabelled.extend_from_slice(&gbk);
    mislabelled.extend_from_slice(b",1980-01-01,441402\n");
    let (code, p) = s.upload(PATH, &st, "text/csv; charset=utf-8", mislabelled, &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["errors"][0]["message"].as_str().is_some_and(|m| m.contains("UTF-8")), "{p}");
    let ragged = format!("id_number,name\n{a},张三\n{a},张三,extra\n").into_bytes();
    let (code, p) = s.upload(PATH, &st, "text/csv", ragged, &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!(p["errors"][0]["row"], 2, "{p}");
    assert!(p["errors"][0]["message"].as_str().is_some_and(|m| m.contains("3 fields")), "{p}");
    // Lines ended by a lone CR (old Mac exports) would read as one line: refused, saying why.
    let mac = format!("id_number,name\r{a},张三\r").into_bytes();
    let (code, p) = s.upload(PATH, &st, "text/csv", mac, &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert!(p["errors"][0]["message"].as_str().is_some_and(|m| m.contains("carriage return")), "{p}");
    assert_eq!(
        s.upload(PATH, &st, "application/x-ndjson", b"{not json\n".to_vec(), &[]).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        s.upload(PATH, &st, "application/vnd.apache.parquet", b"not parquet".to_vec(), &[]).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        s.upload(PATH, &st, "application/pdf", b"%PDF".to_vec(), &[]).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        s.upload(PATH, &st, "text/csv; charset=latin1", b"x".to_vec(), &[]).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        s.upload(&format!("{PATH}?mode=merge"), &st, "text/csv", csv(&[]), &[]).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        s.upload(&format!("{PATH}?on_error=ignore"), &st, "text/csv", csv(&[]), &[]).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert!(versions(&s, "gongan.population", &st).await.is_empty());
    // Nothing is left in the temporary folder.
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test]
async fn skip_mode_commits_valid_rows_and_keeps_rejects_for_the_steward() {
    let s = TestServer::start().await;
    let (st, _) = setup(&s).await;
    let analyst = s.principal("an", "gongan", &["analyst"]).await;
    let a = id_number("441402", "19800101", 1);
    let body = csv(&[
        (&a, "张三", "1980-01-01", "441402", ""),
        ("12345", "李四", "1980-01-01", "441402", ""),
        (&a, "张三again", "1980-01-01", "441402", ""),
    ]);
    let (code, v) = s.upload(&format!("{PATH}?on_error=skip"), &st, "text/csv", body, &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    assert_eq!((v["rows_written"].as_i64(), v["rejected"].as_i64()), (Some(1), Some(2)), "{v}");
    let (code, r) = s.get(&format!("{PATH}/1/rejects"), &st).await;
    assert_eq!(code, StatusCode::OK, "{r}");
    let items = r["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{r}");
    assert_eq!(items[0]["row"], 2);
    assert_eq!(items[0]["values"]["id_number"], "12345");
    assert!(items[0]["errors"][0]["message"].as_str().is_some_and(|m| m.contains("18 characters")), "{r}");
    assert_eq!(items[1]["row"], 3);
    assert!(items[1]["errors"][0]["message"].as_str().is_some_and(|m| m.contains("duplicate")), "{r}");
    // Paging, and who may see them.
    let (_, p1) = s.get(&format!("{PATH}/1/rejects?limit=1"), &st).await;
    let token = p1["next_page_token"].as_str().expect("next page");
    let (_, p2) = s.get(&format!("{PATH}/1/rejects?limit=1&page_token={token}"), &st).await;
    assert_eq!(p2["items"][0]["row"], 3);
    assert_eq!(s.get(&format!("{PATH}/1/rejects"), &analyst).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.get(&format!("{PATH}/9/rejects"), &st).await.0, StatusCode::NOT_FOUND);
    // Only the provider's stewards push.
    assert_eq!(s.upload(PATH, &analyst, "text/csv", csv(&[]), &[]).await.0, StatusCode::FORBIDDEN);
    assert_eq!(s.upload(PATH, ADMIN, "text/csv", csv(&[]), &[]).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn retries_with_an_idempotency_key_commit_once() {
    let s = TestServer::start().await;
    let (st, _) = setup(&s).await;
    let body = csv(&[(&id_number("441402", "19800101", 1), "张三", "1980-01-01", "441402", "")]);
    let key = [("Idempotency-Key", "push-2026-11-27-001")];
    let (c1, v1) = s.upload(PATH, &st, "text/csv", body.clone(), &key).await;
    let (c2, v2) = s.upload(PATH, &st, "text/csv", body.clone(), &key).await;
    assert_eq!((c1, c2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(v1["version"], v2["version"]);
    assert_eq!(versions(&s, "gongan.population", &st).await.len(), 1);
    let (_, v3) = s.upload(PATH, &st, "text/csv", body, &[("Idempotency-Key", "push-2026-11-27-002")]).await;
    assert_eq!(v3["version"], 2);
    assert_eq!(
        s.upload(PATH, &st, "text/csv", csv(&[]), &[("Idempotency-Key", "bad key with spaces")]).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
}

#[tokio::test]
async fn concurrent_pushes_end_as_consecutive_versions() {
    let s = Arc::new(TestServer::start().await);
    let (st, _) = setup(&s).await;
    let mut tasks = Vec::new();
    for i in 0..4u32 {
        let (s, st) = (s.clone(), st.clone());
        tasks.push(tokio::spawn(async move {
            let body = csv(&[(&id_number("441402", "19800101", i), "张三", "1980-01-01", "441402", "")]);
            s.upload(PATH, &st, "text/csv", body, &[]).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (code, v) = t.await.expect("task");
        assert!(code == StatusCode::CREATED || code == StatusCode::CONFLICT, "{code} {v}");
        ok += usize::from(code == StatusCode::CREATED);
    }
    let vs = versions(&s, "gongan.population", &st).await;
    assert_eq!(vs.len(), ok);
    let numbers: Vec<i64> = vs.iter().rev().map(|v| v["version"].as_i64().unwrap_or(0)).collect();
    assert_eq!(numbers, (1..=ok as i64).collect::<Vec<_>>());
    assert_eq!(vs[0]["row_count"].as_i64(), Some(ok as i64));
}

#[tokio::test]
async fn oversized_uploads_are_refused_without_leaving_files() {
    let s = TestServer::start_with(|c| c.max_push_bytes = 1000).await;
    let (st, _) = setup(&s).await;
    let big = vec![b'x'; 5000];
    let (code, p) = s.upload(PATH, &st, "text/csv", big, &[]).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{p}");
    // Without a Content-Length (chunked), the limit is enforced while the body streams in.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 500])));
    let resp = reqwest::Client::new()
        .post(format!("{}{PATH}", s.url()))
        .bearer_auth(&st)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
    assert!(versions(&s, "gongan.population", &st).await.is_empty());
}

#[tokio::test]
async fn a_push_cut_off_by_the_limit_after_rows_were_written_leaves_no_data_files() {
    let s = TestServer::start_with(|c| c.max_push_bytes = 1_000_000).await;
    let (st, _) = setup(&s).await;
    // Valid rows, more than one decoded batch before the limit: they reach
    // the Parquet writers while the body still streams in.
    let rows: Vec<(String, &str, &str, &str, &str)> =
        (0..30_000).map(|i| (id_number("441402", "19800101", i), "张三", "1980-01-01", "441402", "")).collect();
    let body = csv(&rows.iter().map(|r| (r.0.as_str(), r.1, r.2, r.3, r.4)).collect::<Vec<_>>());
    assert!(body.len() > 1_000_000);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let resp = reqwest::Client::new()
        .post(format!("{}{PATH}", s.url()))
        .bearer_auth(&st)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let table = s.data_dir().join("lake/gongan/population");
    let files: Vec<_> = std::fs::read_dir(&table)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(files.iter().all(|f| !f.to_string_lossy().ends_with(".parquet")), "{files:?}");
    assert!(versions(&s, "gongan.population", &st).await.is_empty());
}

#[tokio::test]
async fn after_a_crash_the_catalogue_catches_up_with_the_delta_log() {
    let mut s = TestServer::start().await;
    let (st, d) = setup(&s).await;
    let body = csv(&[(&id_number("441402", "19800101", 1), "张三", "1980-01-01", "441402", "")]);
    assert_eq!(s.upload(PATH, &st, "text/csv", body, &[]).await.0, StatusCode::CREATED);
    s.stop().await;

    // A push that reached the Delta log but not the catalogue (killed between the two).
    let dataset: gdx_catalog::Dataset = serde_json::from_value(d.clone()).expect("dataset");
    let tmp = s.scratch();
    let upload = tmp.join("up.csv");
    std::fs::write(&upload, csv(&[(&id_number("441403", "19900101", 2), "李四", "1990-01-01", "441403", "")]))
        .expect("write");
    let staged = gdx_connectors::stage(
        &upload,
        gdx_connectors::Format::Csv(gdx_connectors::Charset::Utf8),
        &dataset,
        &gdx_connectors::StageOptions { skip_invalid: false, temp_dir: tmp.clone() },
    )
    .expect("staged");
    let lake = gdx_catalog::lake::Lake::new(s.data_dir().join("lake"));
    let info = gdx_catalog::lake::PushInfo {
        version: 2,
        mode: gdx_catalog::lake::WriteMode::Append,
        rows_written: 1,
        rejected: 0,
        committed_by: "st".into(),
        idempotency_key: None,
    };
    let files = lake.write_staged(&dataset, staged.file.as_ref().expect("staging file")).await.expect("files");
    lake.commit(&dataset, files, info).await.expect("commit");
    // And one killed before its commit: an upload in the temporary folder.
    std::fs::write(s.data_dir().join("tmp/upload-killed"), b"half a file").expect("write");

    s.restart().await;
    let vs = versions(&s, "gongan.population", &st).await;
    assert_eq!(vs.iter().map(|v| v["version"].as_i64().unwrap_or(0)).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(vs[0]["row_count"], 2);
    assert_eq!(vs[0]["committed_by"], "st");
    let (_, now) = s.get("/api/v1/datasets/gongan.population", &st).await;
    assert_eq!(now["current_version"], 2);
    assert_eq!(std::fs::read_dir(s.data_dir().join("tmp")).map(|d| d.count()).unwrap_or(0), 0);
    // The next push continues the numbering.
    let body = csv(&[(&id_number("441424", "20000101", 3), "王五", "2000-01-01", "441424", "")]);
    let (_, v) = s.upload(PATH, &st, "text/csv", body, &[]).await;
    assert_eq!(v["version"], 3, "{v}");
}

#[tokio::test]
async fn maintenance_compacts_and_vacuums_without_new_versions() {
    let s = TestServer::start().await;
    let (st, d) = setup(&s).await;
    for i in 0..3u32 {
        let body = csv(&[(&id_number("441402", "19800101", i), "张三", "1980-01-01", "441402", "")]);
        assert_eq!(s.upload(PATH, &st, "text/csv", body, &[]).await.0, StatusCode::CREATED);
    }
    let before = versions(&s, "gongan.population", &st).await;
    let latest = before[0]["delta_version"].as_u64().expect("delta version");
    let rows = lake_rows(&s.data_dir(), &d, latest).await;
    let analyst = s.principal("an", "gongan", &["analyst"]).await;
    let path = "/api/v1/datasets/gongan.population/maintenance";
    assert_eq!(s.post(path, &analyst, serde_json::json!({})).await.0, StatusCode::FORBIDDEN);
    let (code, m) = s.post(path, &st, serde_json::json!({"retention_hours": 0})).await;
    assert_eq!(code, StatusCode::OK, "{m}");
    assert_eq!(m["files_compacted"], 3, "{m}");
    assert_eq!(m["files_written"], 1, "{m}");
    assert!(m["files_deleted"].as_u64().is_some_and(|n| n >= 3), "{m}");
    // No new GDX version; the data is unchanged; the next push continues the numbering.
    let after = versions(&s, "gongan.population", &st).await;
    assert_eq!(after.len(), before.len());
    let lake = gdx_catalog::lake::Lake::new(s.data_dir().join("lake"));
    let dataset: gdx_catalog::Dataset = serde_json::from_value(d.clone()).expect("dataset");
    let table = lake.open(&dataset).await.expect("open").expect("table");
    let now = table.version().expect("version");
    assert!(now > latest);
    assert_eq!(lake_rows(&s.data_dir(), &d, now).await, rows);
    let body = csv(&[(&id_number("441403", "19900101", 9), "李四", "1990-01-01", "441403", "")]);
    let (_, v) = s.upload(PATH, &st, "text/csv", body, &[]).await;
    assert_eq!((v["version"].as_i64(), v["row_count"].as_i64()), (Some(4), Some(4)), "{v}");
}

#[tokio::test]
async fn a_column_added_to_the_catalogue_joins_the_table_at_the_next_push() {
    let s = TestServer::start().await;
    let (st, d) = setup(&s).await;
    let a = id_number("441402", "19800101", 1);
    let body = csv(&[(&a, "张三", "1980-01-01", "441402", "")]);
    assert_eq!(s.upload(PATH, &st, "text/csv", body, &[]).await.0, StatusCode::CREATED);
    let mut columns = d["columns"].clone();
    columns
        .as_array_mut()
        .expect("columns")
        .push(serde_json::json!({"name": "phone", "type": "string", "semantic": "phone"}));
    let (code, d2) = s.patch("/api/v1/datasets/gongan.population", &st, serde_json::json!({"columns": columns})).await;
    assert_eq!(code, StatusCode::OK, "{d2}");
    let b = id_number("441403", "19900101", 2);
    let body = format!(
        "id_number,name,birth_date,county_code,phone\n{b},李四,1990-01-01,441403,13812345678\n{a},张三,1980-01-01,441402,12345\n"
    );
    let (code, p) = s.upload(PATH, &st, "text/csv", body.clone().into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
    assert_eq!((p["errors"][0]["row"].as_u64(), p["errors"][0]["column"].as_str()), (Some(2), Some("phone")), "{p}");
    let good = body.replace(",12345\n", ",+86 139-1234-5678\n");
    let (code, v) = s.upload(&format!("{PATH}?mode=upsert"), &st, "text/csv", good.into_bytes(), &[]).await;
    assert_eq!(code, StatusCode::CREATED, "{v}");
    let rows = lake_rows(&s.data_dir(), &d2, v["delta_version"].as_u64().expect("delta version")).await;
    assert_eq!(
        rows,
        vec![
            format!("{a}|张三|1980-01-01|441402|∅|+86 139-1234-5678"),
            format!("{b}|李四|1990-01-01|441403|∅|13812345678")
        ]
    );
}
