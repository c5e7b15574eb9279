//! Pushing versions of a dataset, and the rows a push set aside.

use std::path::PathBuf;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures::StreamExt;
use gdx_catalog::lake::{LakeError, PushInfo, WriteMode};
use gdx_catalog::{Dataset, DatasetStatus, Version};
use gdx_connectors::{Format, StageOptions};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::auth::Caller;
use super::error::{self, ApiError, ApiResult, Problem};
use super::extract::{Query, page_request};
use crate::state::AppState;

/// Folder of temporary uploads and staging files in the data directory.
pub const TMP_DIR: &str = "tmp";
/// Folder of rejected rows in the data directory.
pub const REJECTS_DIR: &str = "rejects";

/// Parameters of a push.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PushParams {
    /// append (default), replace or upsert (merge on the primary key).
    pub mode: Option<String>,
    /// reject (default: a file with any problem commits nothing) or skip (commit the valid rows, keep the rest aside).
    pub on_error: Option<String>,
}

/// A committed push.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PushResult {
    /// The new version (1, 2, …).
    pub version: i64,
    /// append, replace or upsert.
    pub mode: String,
    /// Rows the push wrote.
    pub rows_written: i64,
    /// Rows in the dataset after the push.
    pub row_count: i64,
    /// Bytes of data files the push added.
    pub bytes: i64,
    /// Rows set aside (skip mode); see `GET .../versions/{v}/rejects`.
    pub rejected: i64,
    /// The Delta table version holding it.
    pub delta_version: Option<i64>,
    /// When it was committed.
    pub committed_at: chrono::DateTime<chrono::Utc>,
}

impl From<&Version> for PushResult {
    fn from(v: &Version) -> Self {
        Self {
            version: v.version,
            mode: v.mode.clone(),
            rows_written: v.rows_written,
            row_count: v.row_count,
            bytes: v.bytes,
            rejected: v.rejected,
            delta_version: v.delta_version,
            committed_at: v.committed_at,
        }
    }
}

fn rejects_path(state: &AppState, dataset: &Dataset, version: i64) -> PathBuf {
    state
        .config
        .data_dir
        .join(REJECTS_DIR)
        .join(&dataset.department)
        .join(&dataset.name)
        .join(format!("{version}.ndjson"))
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()));
    key.map(|k| Some(k.to_string()))
        .ok_or_else(|| ApiError::invalid("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))
}

/// Streams the request body to staging through `tx`, refusing it past
/// `limit` bytes. Stops early, without error, when staging stopped reading
/// (it failed on its own and says why).
async fn receive(
    body: Body,
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
    limit: u64,
) -> ApiResult<u64> {
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other("the upload was interrupted"))).await;
                return Err(interrupted(&e));
            }
        };
        total += chunk.len() as u64;
        if total > limit {
            let _ = tx.send(Err(std::io::Error::other("the upload is too large"))).await;
            return Err(ApiError::new(error::PAYLOAD_TOO_LARGE, format!("uploads are limited to {limit} bytes")));
        }
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    Ok(total)
}

/// An upload that stopped arriving: stalled (408) or cut off (400).
fn interrupted(e: &axum::Error) -> ApiError {
    super::extract::body_error(e)
        .unwrap_or_else(|| ApiError::new(error::MALFORMED_REQUEST, "the upload was interrupted"))
}

/// The body's chunks as a blocking reader (for staging on a blocking thread).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<axum::body::Bytes>>,
    chunk: axum::body::Bytes,
    failed: Option<std::io::Error>,
}

impl ChannelReader {
    fn new(rx: tokio::sync::mpsc::Receiver<std::io::Result<axum::body::Bytes>>) -> Self {
        Self { rx, chunk: axum::body::Bytes::new(), failed: None }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        // Fill the buffer with what has already arrived: the decoder works
        // best on large reads.
        let mut n = 0;
        loop {
            let take = (buf.len() - n).min(self.chunk.len());
            buf[n..n + take].copy_from_slice(&self.chunk.split_to(take));
            n += take;
            if n == buf.len() {
                break;
            }
            match self.rx.try_recv() {
                Ok(Ok(chunk)) => self.chunk = chunk,
                Ok(Err(e)) if n == 0 => return Err(e),
                Ok(Err(e)) => {
                    self.failed = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(n)
    }
}

/// Writes the request body to a temporary file, refusing it past `limit` bytes.
async fn spool(body: Body, dir: &std::path::Path, limit: u64) -> ApiResult<(tempfile::TempPath, u64)> {
    tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::internal(&e))?;
    let tmp = tempfile::Builder::new().prefix("upload-").tempfile_in(dir).map_err(|e| ApiError::internal(&e))?;
    let (file, path) = tmp.into_parts();
    let mut out = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| interrupted(&e))?;
        total += chunk.len() as u64;
        if total > limit {
            // `path` is dropped here: the partial file is removed.
            return Err(ApiError::new(error::PAYLOAD_TOO_LARGE, format!("uploads are limited to {limit} bytes")));
        }
        out.write_all(&chunk).await.map_err(|e| ApiError::internal(&e))?;
    }
    out.flush().await.map_err(|e| ApiError::internal(&e))?;
    Ok((path, total))
}

/// The lake's Parquet writers as the receiver of checked rows.
struct LakeSink<'a>(&'a mut gdx_catalog::lake::PushWriter);

impl gdx_connectors::RowSink for LakeSink<'_> {
    fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.write(batch)?)
    }
}

fn connector_error(e: gdx_connectors::Error) -> ApiError {
    use gdx_connectors::Error as E;
    match e {
        E::Malformed { row, ref message, .. } => {
            let item = gdx_connectors::RowError { row, column: None, message: message.clone() };
            ApiError::rows(vec![item], 1, format!("{e}; nothing was committed"))
        }
        E::Columns { ref message } => {
            let item = gdx_connectors::RowError { row: None, column: None, message: message.clone() };
            ApiError::rows(vec![item], 1, format!("{e}; nothing was committed"))
        }
        E::Unsupported { message } => ApiError::new(error::UNSUPPORTED_MEDIA_TYPE, message),
        other => ApiError::internal(&other),
    }
}

/// The answer of a push, noted for the audit record.
fn pushed(caller: &Caller, id: &str, v: &Version) -> PushResult {
    caller.audit.note(|n| {
        n.versions.insert(id.to_string(), v.version);
        n.rows = u64::try_from(v.rows_written).ok();
    });
    PushResult::from(v)
}

/// Pushes a new version (a steward of the provider department). The body is the file, streamed.
#[utoipa::path(post, operation_id = "push_version", path = "/api/v1/datasets/{id}/versions", tag = "ingest",
    params(("id" = String, Path), PushParams, ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first result")),
    request_body(content = Vec<u8>, description = "The file: text/csv (charset utf-8, gbk or gb18030), application/x-ndjson, application/vnd.apache.parquet or application/vnd.apache.arrow.stream", content_type = "text/csv"),
    responses(
        (status = 201, description = "Committed", body = PushResult),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn push(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(params): Query<PushParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<PushResult>)> {
    let mode: WriteMode =
        params.mode.as_deref().unwrap_or("append").parse().map_err(|m: String| ApiError::invalid("mode", m))?;
    let skip = match params.on_error.as_deref().unwrap_or("reject") {
        "reject" => false,
        "skip" => true,
        _ => return Err(ApiError::invalid("on_error", "must be reject or skip")),
    };
    let dataset = state.catalog.store().dataset(&id).await?;
    if dataset.status == DatasetStatus::Retired {
        return Err(ApiError::new(error::CONFLICT, format!("dataset {id} is retired")));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = Format::from_content_type(content_type).map_err(connector_error)?;
    let key = idempotency_key(&headers)?;
    if let Some(k) = &key
        && let Some(v) = state.catalog.store().version_by_idempotency_key(&id, k).await?
    {
        return Ok((StatusCode::CREATED, axum::Json(pushed(&caller, &id, &v))));
    }
    let limit = state.config.max_push_bytes;
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::new(error::PAYLOAD_TOO_LARGE, format!("uploads are limited to {limit} bytes")));
    }
    let tmp_dir = state.config.data_dir.join(TMP_DIR);
    tokio::fs::create_dir_all(&tmp_dir).await.map_err(|e| ApiError::internal(&e))?;
    let opts = StageOptions { skip_invalid: skip, temp_dir: tmp_dir.clone() };
    let staging_started = std::time::Instant::now();
    let ds = dataset.clone();
    // Reject mode: the body is checked as it arrives and the valid rows go
    // straight to the lake's Parquet writers (their files join no version
    // unless the push commits). Parquet is read from a spooled file (its
    // footer comes last); skip mode stages to a file first, as rows with
    // repeated keys are only known at the end.
    let (staged, writer) = if !skip && !matches!(format, Format::Parquet) {
        let mut writer = state.lake.writer(&dataset).map_err(|e| ApiError::internal(&e))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(16);
        let staging = tokio::task::spawn_blocking(move || {
            let input = gdx_connectors::Input::Stream(Box::new(ChannelReader::new(rx)));
            let staged = gdx_connectors::stage_to(input, format, &ds, &opts, &mut LakeSink(&mut writer));
            (staged, writer)
        });
        let received = receive(body, tx, limit).await;
        let (staged, writer) = staging.await.map_err(|e| ApiError::internal(&e))?;
        match received {
            Ok(bytes_in) => {
                tracing::info!(dataset = %id, principal = %caller.principal.id, bytes = bytes_in, "upload received");
            }
            Err(e) => {
                writer.abort().await;
                return Err(e);
            }
        }
        (staged, Some(writer))
    } else {
        let (upload, bytes_in) = spool(body, &tmp_dir, limit).await?;
        tracing::info!(dataset = %id, principal = %caller.principal.id, bytes = bytes_in, "upload received");
        let mut writer =
            if skip { None } else { Some(state.lake.writer(&dataset).map_err(|e| ApiError::internal(&e))?) };
        tokio::task::spawn_blocking(move || {
            let staged = match writer.as_mut() {
                Some(w) => gdx_connectors::stage_to(
                    gdx_connectors::Input::Path(upload.to_path_buf()),
                    format,
                    &ds,
                    &opts,
                    &mut LakeSink(w),
                ),
                None => gdx_connectors::stage(&upload, format, &ds, &opts),
            };
            drop(upload);
            (staged, writer)
        })
        .await
        .map_err(|e| ApiError::internal(&e))?
    };
    let staged = match staged {
        Ok(s) => s,
        Err(e) => {
            if let Some(w) = writer {
                w.abort().await;
            }
            return Err(connector_error(e));
        }
    };
    tracing::info!(
        dataset = %id,
        rows = staged.rows_read,
        valid = staged.rows_valid,
        problems = staged.error_count,
        elapsed_ms = staging_started.elapsed().as_millis() as u64,
        "upload checked"
    );
    if !staged.committable(skip) {
        if let Some(w) = writer {
            w.abort().await;
        }
        let detail = format!(
            "{} problem(s) in {} row(s) read; nothing was committed (on_error=skip commits the valid rows)",
            staged.error_count, staged.rows_read
        );
        return Err(ApiError::rows(staged.errors, staged.error_count, detail));
    }
    let files = match (writer, &staged.file) {
        (Some(w), _) => w.finish().await,
        (None, Some(file)) => state.lake.write_staged(&dataset, file).await,
        (None, None) => return Err(ApiError::internal(&"staging produced no rows file")),
    }
    .map_err(|e| ApiError::internal(&e))?;

    let lock = state.lake.write_lock(&id);
    let _guard = lock.lock().await;
    if let Some(k) = &key
        && let Some(v) = state.catalog.store().version_by_idempotency_key(&id, k).await?
    {
        files.discard();
        return Ok((StatusCode::CREATED, axum::Json(pushed(&caller, &id, &v))));
    }
    let current = match state.catalog.store().dataset(&id).await {
        Ok(c) => c,
        Err(e) => {
            files.discard();
            return Err(e.into());
        }
    };
    let next = current.current_version.unwrap_or(0) + 1;
    let info = PushInfo {
        version: next,
        mode,
        rows_written: staged.rows_valid as i64,
        rejected: staged.rejected as i64,
        committed_by: caller.principal.id.clone(),
        idempotency_key: key.clone(),
    };
    let committed = state.lake.commit(&current, files, info).await.map_err(|e| match e {
        LakeError::Conflict { .. } => ApiError::new(error::CONFLICT, e.to_string()),
        LakeError::ResourcesExhausted { .. } => ApiError::new(
            error::RESOURCES_EXHAUSTED,
            "the push needs more memory than the server gives one commit; nothing was committed: \
             push it in smaller files",
        ),
        other => ApiError::internal(&other),
    })?;
    if let Some(rejects) = staged.rejects {
        let dest = rejects_path(&state, &current, next);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| ApiError::internal(&e))?;
        }
        rejects.persist(&dest).map_err(|e| ApiError::internal(&e))?;
    }
    let version = crate::ingest::version_of(&committed);
    state.catalog.store().record_version(&id, version.clone()).await?;
    // Rules on this dataset are evaluated against the new version.
    state.push.changed();
    // The record index of the new files is built beside the answer, not before
    // it (a push's rate stays the lake's); a lookup that comes first waits for
    // it, and should it fail, the next lookup builds what is missing.
    let (records, lake, dataset, delta) =
        (state.records.clone(), state.lake.clone(), current.clone(), committed.delta_version);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match records.snapshot(&lake, &dataset, delta).await {
            Ok(s) => {
                tracing::info!(dataset = %dataset.id, rows = s.rows(), ms = started.elapsed().as_millis() as u64, "record index updated")
            }
            Err(e) => tracing::warn!(dataset = %dataset.id, error = %e, "record index not updated at commit"),
        }
    });
    tracing::info!(dataset = %id, version = next, delta_version = committed.delta_version, rows = version.rows_written, "version committed");
    Ok((StatusCode::CREATED, axum::Json(pushed(&caller, &id, &version))))
}

/// Paging of the rejects list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectParams {
    /// Items per page, 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Token from the previous page.
    pub page_token: Option<String>,
}

/// Rows a push set aside, with their reasons (stewards of the provider).
#[utoipa::path(get, operation_id = "list_rejects", path = "/api/v1/datasets/{id}/versions/{v}/rejects", tag = "ingest",
    params(("id" = String, Path), ("v" = i64, Path), RejectParams),
    responses(
        (status = 200, description = "OK", body = gdx_catalog::Page<serde_json::Value>),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rejects(
    State(state): State<AppState>,
    Path((id, v)): Path<(String, i64)>,
    Query(q): Query<RejectParams>,
) -> ApiResult<axum::Json<gdx_catalog::Page<serde_json::Value>>> {
    let page = page_request(q.limit, q.page_token)?;
    let dataset = state.catalog.store().dataset(&id).await?;
    state.catalog.store().version(&id, v).await?;
    let path = rejects_path(&state, &dataset, v);
    let offset = page.offset()?;
    let limit = page.limit;
    let items = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<serde_json::Value>> {
        use std::io::BufRead;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for line in std::io::BufReader::new(file).lines().skip(offset).take(limit + 1) {
            out.push(serde_json::from_str(&line?).map_err(std::io::Error::other)?);
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(&e))?
    .map_err(|e| ApiError::internal(&e))?;
    Ok(axum::Json(page.page(items)?))
}

/// What a maintenance request asks for.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// Compact small files (default true).
    pub optimize: Option<bool>,
    /// Delete files no retained version needs (default true).
    pub vacuum: Option<bool>,
    /// Hours of history to keep (default: the server's `vacuum_retention_hours`).
    pub retention_hours: Option<u64>,
}

/// The longest history a vacuum may be asked to keep.
const MAX_RETENTION_HOURS: u64 = 100 * 366 * 24;

/// Compacts and vacuums a dataset's table now (its steward, or an admin).
#[utoipa::path(post, operation_id = "maintain_dataset", path = "/api/v1/datasets/{id}/maintenance", tag = "ingest",
    params(("id" = String, Path)), request_body = MaintenanceRequest,
    responses(
        (status = 200, description = "Done", body = gdx_catalog::lake::Maintenance),
        (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn maintain(
    State(state): State<AppState>,
    Path(id): Path<String>,
    super::extract::Json(req): super::extract::Json<MaintenanceRequest>,
) -> ApiResult<axum::Json<gdx_catalog::lake::Maintenance>> {
    let dataset = state.catalog.store().dataset(&id).await?;
    let hours = req.retention_hours.unwrap_or(state.config.vacuum_retention_hours);
    if hours > MAX_RETENTION_HOURS {
        return Err(ApiError::invalid("retention_hours", format!("must be at most {MAX_RETENTION_HOURS} (100 years)")));
    }
    let vacuum = req.vacuum.unwrap_or(true).then(|| std::time::Duration::from_secs(hours.saturating_mul(3600)));
    let lock = state.lake.write_lock(&id);
    let _guard = lock.lock().await;
    let m = state
        .lake
        .maintain(&dataset, req.optimize.unwrap_or(true), vacuum)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    state.records.sweep(&state.lake, &dataset);
    tracing::info!(dataset = %id, compacted = m.files_compacted, deleted = m.files_deleted, "maintenance by request");
    Ok(axum::Json(m))
}
