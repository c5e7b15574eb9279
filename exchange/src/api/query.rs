//! `POST /api/v1/query`: governed SQL over every dataset the caller may read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use datafusion::error::DataFusionError;
use futures::StreamExt;
use gdx_catalog::{Dataset, Principal};
use gdx_policies::HashKey;
use gdx_policies::filter::Reader;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Caller;
use super::error::{self, ApiError, ApiResult, Problem};
use super::extract::{Json, Query};
use crate::limits::QueryPermit;
use crate::query::{GovernedTable, refuse_statement, register, session};
use crate::state::AppState;

/// Parameters of a query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct QueryParams {
    /// A steward previews its own department's datasets as an analyst of this department would see them.
    pub as_department: Option<String>,
}

/// A query.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One SQL query (`SELECT`, `WITH`, `VALUES`, or `EXPLAIN` of one); datasets are `department.name`.
    #[schema(example = "SELECT county_code, count(*) FROM gongan.population GROUP BY county_code")]
    pub sql: String,
    /// Why the data is read (recorded with the access).
    pub purpose: Option<String>,
    /// GDX versions to read instead of the latest, by dataset.
    pub as_of: Option<HashMap<String, i64>>,
    /// Rows to return at most (default and maximum: the server's `query_max_rows`).
    pub limit: Option<usize>,
}

/// A column of the answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResultColumn {
    /// Name.
    pub name: String,
    /// Arrow type, e.g. `Utf8`, `Int64`, `Date32`.
    #[serde(rename = "type")]
    pub data_type: String,
}

/// The answer of a query.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueryResult {
    /// Columns, in order.
    pub columns: Vec<ResultColumn>,
    /// Rows, each a list of values in column order.
    #[schema(value_type = Vec<Vec<serde_json::Value>>)]
    pub rows: Vec<Vec<Value>>,
    /// The GDX version of each dataset the query read.
    pub versions: BTreeMap<String, i64>,
    /// Whether rows were left out past the limit.
    pub truncated: bool,
}

/// The answer to a query stopped at its time limit.
fn too_long(limit: std::time::Duration) -> ApiError {
    ApiError::new(error::UNAVAILABLE, format!("the query ran longer than {} s and was stopped", limit.as_secs()))
}

pub(crate) fn query_error(e: DataFusionError) -> ApiError {
    match e.find_root() {
        DataFusionError::ResourcesExhausted(_) => ApiError::new(
            error::RESOURCES_EXHAUSTED,
            "the query needs more memory than a query may use; narrow it or aggregate first",
        ),
        DataFusionError::Plan(m) if m.contains("table") && m.contains("not found") => {
            ApiError::new(error::TABLE_NOT_FOUND, m.clone())
        }
        DataFusionError::SQL(m, _) => ApiError::new(error::INVALID_QUERY, format!("syntax error: {m}")),
        DataFusionError::Plan(m) | DataFusionError::Execution(m) => ApiError::new(error::INVALID_QUERY, m.clone()),
        DataFusionError::SchemaError(m, _) => ApiError::new(error::INVALID_QUERY, m.to_string()),
        DataFusionError::ArrowError(m, _) => ApiError::new(error::INVALID_QUERY, m.to_string()),
        DataFusionError::NotImplemented(m) => ApiError::new(error::INVALID_QUERY, format!("not supported: {m}")),
        other => ApiError::internal(other),
    }
}

/// What the reader's placeholders stand for.
pub(crate) async fn reader(state: &AppState, principal: &Principal) -> ApiResult<Reader> {
    let department = match &principal.department {
        Some(d) => Some(state.catalog.store().department(d).await?),
        None => None,
    };
    Ok(Reader {
        department_id: principal.department.clone(),
        department_region: department.and_then(|d| d.region),
        principal_id: Some(principal.id.clone()),
    })
}

/// Opens a dataset's table at its latest version or the GDX version asked for.
async fn open(
    state: &AppState,
    d: &Dataset,
    as_of: Option<i64>,
) -> ApiResult<Option<(Arc<dyn datafusion::catalog::TableProvider>, i64)>> {
    let table = match as_of {
        Some(v) => {
            let version =
                state.catalog.store().version(&d.id, v).await.map_err(|_| {
                    ApiError::invalid(format!("as_of.{}", d.id), format!("{} has no version {v}", d.id))
                })?;
            let Some(delta) = version.delta_version else { return Ok(None) };
            state.lake.open_version(d, delta as u64).await.map_err(|e| ApiError::internal(&e))?
        }
        None => match state.lake.open(d).await.map_err(|e| ApiError::internal(&e))? {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    let provider = table.table_provider().await.map_err(query_error)?;
    Ok(Some((provider, as_of.or(d.current_version).unwrap_or(0))))
}

/// Runs one governed query. The session holds only the datasets the caller
/// may read, each filtered and masked inside its own scan.
#[utoipa::path(post, operation_id = "query", path = "/api/v1/query", tag = "query",
    params(QueryParams),
    request_body = QueryRequest,
    responses(
        (status = 200, description = "The rows: JSON by default; CSV, Arrow IPC stream or Parquet by Accept",
            content(
                (QueryResult = "application/json"),
                (String = "text/csv"),
                (Vec<u8> = "application/vnd.apache.arrow.stream"),
                (Vec<u8> = "application/vnd.apache.parquet"),
            ),
            headers(("GDX-Versions" = String, description = "dataset=version, comma-separated"))),
        (status = 406, description = "No answer format the client accepts", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "sql_not_allowed, table_not_found or invalid_query", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn query(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<QueryParams>,
    headers: HeaderMap,
    Json(request): Json<QueryRequest>,
) -> ApiResult<Response> {
    caller.audit.note(|n| {
        n.sql = Some(request.sql.clone());
        n.purpose = request.purpose.clone();
        n.detail = params.as_department.as_ref().map(|d| format!("preview as {d}"));
    });
    if let Some(why) = refuse_statement(&request.sql) {
        return Err(ApiError::new(error::SQL_NOT_ALLOWED, why));
    }
    let format = AnswerFormat::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()))?;
    // Held until the answer has left (a streamed one holds it in its tail).
    let permit = state.limits.start_query(&caller.principal.id).map(Arc::new).ok_or_else(|| {
        metrics::counter!("gdx_rate_limited_total", "limit" => "queries").increment(1);
        let cap = state.config.limits.concurrent_queries_of(&caller.principal.id);
        ApiError::rate_limited(
            format!("this principal already runs {cap} queries at once, its limit"),
            std::time::Duration::from_secs(1),
        )
    })?;
    let viewer = match &params.as_department {
        None => None,
        Some(department) => Some(preview_as(&state, &caller.principal, department).await?),
    };
    let max_rows = usize::try_from(state.config.query_max_rows).unwrap_or(usize::MAX).max(1);
    let limit = request.limit.unwrap_or(max_rows).clamp(1, max_rows);
    let timeout = std::time::Duration::from_secs(state.config.query_timeout_secs.max(1));
    let deadline = tokio::time::Instant::now() + timeout;
    let too_long = || too_long(timeout);
    // The query's future is dropped when the time is up, which stops it.
    let (df, versions) = tokio::time::timeout_at(deadline, prepare(&state, &caller, viewer.as_ref(), &request))
        .await
        .map_err(|_| too_long())??;
    caller.audit.note(|n| {
        n.datasets = versions.keys().cloned().collect();
        n.versions = versions.clone();
    });
    caller.within_quotas(&state, versions.keys(), chrono::Utc::now())?;
    tracing::info!(
        principal = %caller.principal.id,
        as_department = viewer.as_ref().and_then(|v| v.department.as_deref()).unwrap_or(""),
        purpose = request.purpose.as_deref().unwrap_or(""),
        format = format.content_type(),
        "query planned"
    );
    let mut response = match format {
        AnswerFormat::Json => {
            let tail = || StreamTail::new(&state, &caller, &versions, request.purpose.as_deref(), &permit);
            let (response, rows) = json_answer(df, versions.clone(), limit, deadline, timeout, tail).await?;
            caller.audit.note(|n| n.rows = rows);
            response
        }
        other => {
            let stream = tokio::time::timeout_at(deadline, crate::query::execute(df))
                .await
                .map_err(|_| too_long())?
                .map_err(query_error)?;
            let tail = StreamTail::new(&state, &caller, &versions, request.purpose.as_deref(), &permit);
            let body = encode(stream, other, limit, deadline, tail).map_err(|e| ApiError::internal(&e))?;
            ([(header::CONTENT_TYPE, other.content_type())], Body::from_stream(body)).into_response()
        }
    };
    let names = versions.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    if let Ok(v) = HeaderValue::from_str(&names) {
        response.headers_mut().insert("gdx-versions", v);
    }
    Ok(response)
}

/// The second audit record of a streamed answer: the rows that actually
/// left and whether the stream ended as it should (complete or cut at the
/// limit) or failed (an error, the time limit, the client gone). Appended,
/// without waiting, when the body's stream is dropped. The first record,
/// written before the answer left, has no row count for such answers.
struct StreamTail {
    audit: crate::audit::AuditLog,
    record: Option<crate::audit::Record>,
    rows: u64,
    complete: bool,
    /// The caller's query slot, freed when the stream ends.
    _permit: Arc<QueryPermit>,
    /// Where the rows that left count against grant quotas.
    quotas: (Arc<crate::limits::Limiter>, Arc<gdx_policies::DataAuthorizer>),
}

impl StreamTail {
    fn new(
        state: &AppState,
        caller: &Caller,
        versions: &BTreeMap<String, i64>,
        purpose: Option<&str>,
        permit: &Arc<QueryPermit>,
    ) -> Self {
        let record = crate::audit::Record {
            principal: Some(caller.principal.id.clone()),
            department: caller.principal.department.clone(),
            action: "query.streamed".into(),
            datasets: versions.keys().cloned().collect(),
            versions: versions.clone(),
            purpose: purpose.map(str::to_string),
            ..crate::audit::Record::default()
        };
        Self {
            audit: state.audit.clone(),
            record: Some(record),
            rows: 0,
            complete: false,
            _permit: Arc::clone(permit),
            quotas: (state.limits.clone(), state.data.clone()),
        }
    }
}

impl Drop for StreamTail {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.rows = Some(self.rows);
            if let Some(department) = &record.department {
                let (limits, data) = &self.quotas;
                limits.count_quota_rows(data, department, &record.datasets, self.rows, chrono::Utc::now());
            }
            record.outcome = if self.complete { "ok" } else { "failed" }.into();
            self.audit.append_detached(record);
        }
    }
}

/// How an answer is written, chosen by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerFormat {
    Json,
    Csv,
    Arrow,
    Parquet,
}

impl AnswerFormat {
    fn from_accept(accept: Option<&str>) -> ApiResult<Self> {
        let Some(accept) = accept else { return Ok(AnswerFormat::Json) };
        for item in accept.split(',') {
            let media = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            match media.as_str() {
                "application/json" | "*/*" | "application/*" => return Ok(AnswerFormat::Json),
                "text/csv" | "text/*" => return Ok(AnswerFormat::Csv),
                "application/vnd.apache.arrow.stream" => return Ok(AnswerFormat::Arrow),
                "application/vnd.apache.parquet" => return Ok(AnswerFormat::Parquet),
                _ => {}
            }
        }
        Err(ApiError::new(
            error::NOT_ACCEPTABLE,
            "answers are application/json, text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet",
        ))
    }

    fn content_type(self) -> &'static str {
        match self {
            AnswerFormat::Json => "application/json",
            AnswerFormat::Csv => "text/csv; charset=utf-8",
            AnswerFormat::Arrow => "application/vnd.apache.arrow.stream",
            AnswerFormat::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Encodes batches as they come, up to `limit` rows. A failure or the
/// deadline midway ends the body with an error, so the client sees a cut
/// answer, never a short one that looks complete.
fn encode(
    stream: datafusion::execution::SendableRecordBatchStream,
    format: AnswerFormat,
    limit: usize,
    deadline: tokio::time::Instant,
    tail: StreamTail,
) -> Result<impl futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>>, arrow::error::ArrowError> {
    let schema = stream.schema();
    let encoder = Encoder::new(format, &schema)?;
    // The tail travels in the stream's state: dropped, and recorded, with the body.
    let state = (stream, encoder, 0usize, false, tail);
    Ok(futures::stream::unfold(state, move |(mut stream, mut encoder, mut sent, done, mut tail)| async move {
        if done {
            return None;
        }
        let next = if sent >= limit {
            Ok(Ok(None))
        } else {
            tokio::time::timeout_at(deadline, stream.next()).await.map(|b| b.transpose())
        };
        let chunk = match next {
            Err(_) => Err(std::io::Error::other("the query ran out of time")),
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Ok(Ok(Some(batch))) => {
                let take = batch.num_rows().min(limit - sent);
                sent += take;
                tail.rows = sent as u64;
                encoder.write(&batch.slice(0, take)).map_err(std::io::Error::other)
            }
            Ok(Ok(None)) => {
                let finished = encoder.finish(&stream.schema()).map_err(std::io::Error::other);
                tail.complete = finished.is_ok();
                return Some((finished, (stream, encoder, sent, true, tail)));
            }
        };
        let failed = chunk.is_err();
        Some((chunk, (stream, encoder, sent, failed, tail)))
    }))
}

/// The writers of the streamed formats, drained after every batch.
enum Encoder {
    /// Whether the header row is still to be written.
    Csv(bool),
    Arrow(Box<arrow::ipc::writer::StreamWriter<Vec<u8>>>),
    Parquet(Box<parquet::arrow::ArrowWriter<Vec<u8>>>),
}

impl Encoder {
    fn new(format: AnswerFormat, schema: &arrow::datatypes::SchemaRef) -> Result<Self, arrow::error::ArrowError> {
        Ok(match format {
            AnswerFormat::Csv => Encoder::Csv(true),
            AnswerFormat::Arrow => {
                Encoder::Arrow(Box::new(arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?))
            }
            AnswerFormat::Json => {
                return Err(arrow::error::ArrowError::InvalidArgumentError("JSON answers are not streamed".into()));
            }
            AnswerFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                Encoder::Parquet(Box::new(
                    parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props))
                        .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?,
                ))
            }
        })
    }

    fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<axum::body::Bytes, arrow::error::ArrowError> {
        let out = match self {
            Encoder::Csv(header) => {
                let mut w = arrow::csv::WriterBuilder::new().with_header(*header).build(Vec::new());
                w.write(batch)?;
                *header = false;
                w.into_inner()
            }
            Encoder::Arrow(w) => {
                w.write(batch)?;
                std::mem::take(w.get_mut())
            }
            Encoder::Parquet(w) => {
                w.write(batch).map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
                std::mem::take(w.inner_mut())
            }
        };
        Ok(out.into())
    }

    fn finish(&mut self, schema: &arrow::datatypes::SchemaRef) -> Result<axum::body::Bytes, arrow::error::ArrowError> {
        let out = match self {
            // A query without rows still names its columns.
            Encoder::Csv(true) => {
                let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
                w.write(&arrow::array::RecordBatch::new_empty(schema.clone()))?;
                w.into_inner()
            }
            Encoder::Csv(false) => Vec::new(),
            Encoder::Arrow(w) => {
                w.finish()?;
                std::mem::take(w.get_mut())
            }
            Encoder::Parquet(w) => {
                w.finish().map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?;
                std::mem::take(w.inner_mut())
            }
        };
        Ok(out.into())
    }
}

/// The principal a steward's preview reads as: an analyst of `department`.
async fn preview_as(state: &AppState, steward: &Principal, department: &str) -> ApiResult<Principal> {
    if !steward.has_role(gdx_catalog::Role::Steward) || steward.department.is_none() {
        return Err(ApiError::invalid("as_department", "only a steward previews its datasets as another department"));
    }
    let d = state
        .catalog
        .store()
        .department(department)
        .await
        .map_err(|_| ApiError::invalid("as_department", format!("no department {department}")))?;
    Ok(Principal {
        id: format!("preview:{}", steward.id),
        name: steward.name.clone(),
        department: Some(d.id),
        kind: steward.kind,
        roles: vec![gdx_catalog::Role::Analyst],
        disabled: false,
        created_at: steward.created_at,
    })
}

/// The session for one query, with the caller's governed tables, and the query planned in it.
/// The audit log's name in auditors' SQL.
const AUDIT_TABLE: &str = "gdx.audit";

async fn prepare(
    state: &AppState,
    caller: &Caller,
    viewer: Option<&Principal>,
    request: &QueryRequest,
) -> ApiResult<(datafusion::dataframe::DataFrame, BTreeMap<String, i64>)> {
    let principal = viewer.unwrap_or(&caller.principal);
    // A preview shows the steward's own datasets only.
    let only = viewer.and(caller.principal.department.clone());
    // Auditors (themselves, not a preview) query the audit log they oversee as `gdx.audit`.
    let audit = if viewer.is_none() && caller.principal.has_role(gdx_catalog::Role::Auditor) {
        Some(state.audit.table(super::supervision::audit_scope(state, caller).await?))
    } else {
        None
    };
    let as_of = request.as_of.clone().unwrap_or_default();
    let sources = Sources { only: only.as_deref(), as_of: &as_of, audit, unversioned_empty: false, changes: None };
    governed_frame(state, principal, &request.sql, sources).await
}

/// What a governed session may hold beside the datasets the reader may read.
pub(crate) struct Sources<'a> {
    /// Only this department's datasets (a steward's preview).
    pub only: Option<&'a str>,
    /// GDX versions to read instead of the latest, by dataset.
    pub as_of: &'a HashMap<String, i64>,
    /// The audit log as `gdx.audit`, for auditors.
    pub audit: Option<Arc<dyn datafusion::catalog::TableProvider>>,
    /// Whether a readable dataset without any version is an empty table
    /// (push rules may name one) instead of no table at all.
    pub unversioned_empty: bool,
    /// Rows to read instead of a dataset's (a push rule evaluating the rows
    /// a commit changed), governed as the dataset is.
    pub changes: Option<(&'a str, Arc<dyn datafusion::catalog::TableProvider>)>,
}

/// Plans `sql` as `principal` in a fresh session that holds only the
/// datasets `principal` may read, each filtered and masked inside its own
/// scan; with the plan, the GDX version of each dataset it reads.
pub(crate) async fn governed_frame(
    state: &AppState,
    principal: &Principal,
    sql: &str,
    sources: Sources<'_>,
) -> ApiResult<(datafusion::dataframe::DataFrame, BTreeMap<String, i64>)> {
    let Sources { only, as_of, audit, unversioned_empty, changes } = sources;
    let reader = reader(state, principal).await?;
    let memory = usize::try_from(state.config.query_memory_bytes).unwrap_or(usize::MAX);
    let spill = state.config.data_dir.join(super::versions::TMP_DIR).join("query-spill");
    tokio::fs::create_dir_all(&spill).await.map_err(|e| ApiError::internal(&e))?;
    let ctx = session(memory, &spill).map_err(|e| ApiError::internal(&e))?;
    let key = Arc::new(HashKey::new(state.secret.key()));
    let now = chrono::Utc::now();
    let referenced = referenced_tables(&ctx, sql);
    let mut versions = BTreeMap::new();
    for d in crate::ingest::all_datasets(&state.catalog).await.map_err(|e| ApiError::internal(&e))? {
        if only.is_some_and(|own| own != d.department) {
            continue;
        }
        // Only the datasets the query names are opened (all of them for the information schema).
        if referenced.as_ref().is_some_and(|r| !r.contains(&d.id) && !as_of.contains_key(&d.id)) {
            continue;
        }
        let Ok(plan) = state.data.plan(principal, &d, now) else { continue };
        let opened = match &changes {
            Some((id, rows)) if *id == d.id => Some((rows.clone(), d.current_version.unwrap_or(0))),
            _ => open(state, &d, as_of.get(&d.id).copied()).await?,
        };
        let (provider, version) = match opened {
            Some(opened) => opened,
            None if unversioned_empty && d.current_version.is_none() => {
                let schema = Arc::new(d.arrow_schema());
                let empty = datafusion::datasource::MemTable::try_new(schema, vec![vec![]])
                    .map_err(|e| ApiError::internal(&e))?;
                (Arc::new(empty) as Arc<dyn datafusion::catalog::TableProvider>, 0)
            }
            None => continue,
        };
        let columns: Vec<String> = d.columns.iter().map(|c| c.name.clone()).collect();
        let table = GovernedTable::try_new(
            &d.id,
            provider,
            gdx_policies::AccessPlan::clone(&plan),
            &reader,
            &columns,
            key.clone(),
            &ctx.state(),
        )
        .map_err(|e| ApiError::internal(&e))?;
        register(&ctx, &d.department, &d.name, Arc::new(table)).map_err(|e| ApiError::internal(&e))?;
        versions.insert(d.id.clone(), version);
    }
    if let Some(table) = audit
        && referenced.as_ref().is_none_or(|r| r.contains(AUDIT_TABLE))
    {
        register(&ctx, "gdx", "audit", table).map_err(|e| ApiError::internal(&e))?;
    }
    for id in as_of.keys() {
        if !versions.contains_key(id) {
            return Err(ApiError::new(error::TABLE_NOT_FOUND, format!("table '{id}' not found")));
        }
    }
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await.map_err(query_error)?;
    // The versions of what the query reads, not of everything it could.
    let mut read = std::collections::BTreeSet::new();
    let mut settings = false;
    use datafusion::common::tree_node::TreeNodeRecursion;
    df.logical_plan()
        .apply_with_subqueries(|node| {
            if let datafusion::logical_expr::LogicalPlan::TableScan(scan) = node {
                let t = &scan.table_name;
                if let Some(schema) = t.schema() {
                    read.insert(format!("{schema}.{}", t.table()));
                    // The engine's settings name server paths and limits.
                    settings |= schema == "information_schema" && t.table() == "df_settings";
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(query_error)?;
    if settings {
        return Err(ApiError::new(error::SQL_NOT_ALLOWED, "the query engine's settings are not readable"));
    }
    versions.retain(|id, _| read.contains(id));
    Ok((df, versions))
}

/// The `department.name` tables a query names; `None` when every readable
/// dataset must be registered (the information schema, or a query the
/// planner will report as malformed anyway).
fn referenced_tables(
    ctx: &datafusion::prelude::SessionContext,
    sql: &str,
) -> Option<std::collections::HashSet<String>> {
    let state = ctx.state();
    let statement = state.sql_to_statement(sql, &state.config().options().sql_parser.dialect).ok()?;
    // SHOW TABLES and SHOW COLUMNS read the information schema.
    let datafusion::sql::parser::Statement::Statement(inner) = &statement else { return None };
    if !matches!(inner.as_ref(), datafusion::sql::sqlparser::ast::Statement::Query(_)) {
        return None;
    }
    let refs = state.resolve_table_references(&statement).ok()?;
    let mut out = std::collections::HashSet::new();
    for r in refs {
        match r.schema() {
            Some("information_schema") => return None,
            Some(schema) => {
                out.insert(format!("{schema}.{}", r.table()));
            }
            None => {}
        }
    }
    Some(out)
}

/// Rows a JSON answer holds before it commits to `200` and streams the rest.
const JSON_BUFFER_ROWS: usize = 1000;

/// The answer as JSON, up to `limit` rows. An answer of up to
/// [`JSON_BUFFER_ROWS`] rows is built whole, so that an error while it runs
/// is still a proper problem answer; a longer one is written as its rows
/// arrive (`columns` and `versions` first, `truncated` last), and a failure
/// or the deadline midway cuts the body, as for the other formats. Past the
/// limit the query's stream is dropped, which stops it. With the answer, the
/// number of rows when it was built whole.
async fn json_answer(
    df: datafusion::dataframe::DataFrame,
    versions: BTreeMap<String, i64>,
    limit: usize,
    deadline: tokio::time::Instant,
    deadline_after: std::time::Duration,
    tail: impl FnOnce() -> StreamTail,
) -> ApiResult<(Response, Option<u64>)> {
    let too_long = || too_long(deadline_after);
    let schema = df.schema().as_arrow().clone();
    let columns: Vec<ResultColumn> = schema
        .fields()
        .iter()
        .map(|f| ResultColumn { name: f.name().clone(), data_type: f.data_type().to_string() })
        .collect();
    let mut stream = tokio::time::timeout_at(deadline, crate::query::execute(df))
        .await
        .map_err(|_| too_long())?
        .map_err(query_error)?;
    let mut rows = Vec::new();
    let mut ended = false;
    while rows.len() <= limit && rows.len() < JSON_BUFFER_ROWS {
        match tokio::time::timeout_at(deadline, stream.next()).await.map_err(|_| too_long())? {
            None => {
                ended = true;
                break;
            }
            Some(batch) => rows.extend(json_rows(&batch.map_err(query_error)?).map_err(|e| ApiError::internal(&e))?),
        }
    }
    if ended || rows.len() > limit {
        drop(stream);
        let truncated = rows.len() > limit;
        rows.truncate(limit);
        let count = rows.len() as u64;
        return Ok((axum::Json(QueryResult { columns, rows, versions, truncated }).into_response(), Some(count)));
    }
    // Long: stream the rest.
    let head = serde_json::json!({"columns": columns, "versions": versions});
    let mut first = head.to_string();
    first.pop(); // the closing brace: rows and truncated follow
    first.push_str(",\"rows\":[");
    first.push_str(&join_rows(&rows, true).map_err(|e| ApiError::internal(&e))?);
    let sent = rows.len();
    let mut tail = tail();
    tail.rows = sent as u64;
    let state = (Some(stream), sent, Some(first), false, tail);
    let body = futures::stream::unfold(state, move |(stream, sent, first, done, mut tail)| async move {
        if done {
            return None;
        }
        if let Some(first) = first {
            return Some((Ok(axum::body::Bytes::from(first)), (stream, sent, None, false, tail)));
        }
        let mut stream = stream?;
        let end = |text: &'static str, mut tail: StreamTail| {
            tail.complete = true;
            Some((Ok(axum::body::Bytes::from(text)), (None, sent, None, true, tail)))
        };
        // Past the limit: one more row tells whether the answer was cut.
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let batch = match next {
            Err(_) => {
                return Some((Err(std::io::Error::other("the query ran out of time")), (None, sent, None, true, tail)));
            }
            Ok(Some(Err(e))) => {
                return Some((Err(std::io::Error::other(e.to_string())), (None, sent, None, true, tail)));
            }
            Ok(Some(Ok(b))) => b,
            Ok(None) => return end("],\"truncated\":false}", tail),
        };
        if batch.num_rows() == 0 {
            return Some((Ok(axum::body::Bytes::new()), (Some(stream), sent, None, false, tail)));
        }
        if sent >= limit {
            return end("],\"truncated\":true}", tail);
        }
        let take = batch.num_rows().min(limit - sent);
        let chunk = json_rows(&batch.slice(0, take))
            .map_err(std::io::Error::other)
            .and_then(|r| join_rows(&r, sent == 0).map_err(std::io::Error::other));
        let failed = chunk.is_err();
        let cut = take < batch.num_rows();
        if !failed {
            tail.rows = (sent + take) as u64;
            tail.complete = cut;
        }
        let chunk = chunk.map(|mut c| {
            if cut {
                c.push_str("],\"truncated\":true}");
            }
            axum::body::Bytes::from(c)
        });
        Some((chunk, (Some(stream), sent + take, None, failed || cut, tail)))
    });
    Ok((([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response(), None))
}

/// Rows as JSON arrays separated by commas, with a leading comma unless `first`.
fn join_rows(rows: &[Vec<Value>], first: bool) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        if i > 0 || !first {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(row)?);
    }
    Ok(out)
}

/// Whether JSON answers carry a column of this type as text: decimals, so
/// that no digit is lost to a float.
fn carried_as_text(t: &arrow::datatypes::DataType) -> bool {
    use arrow::datatypes::DataType;
    matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..))
}

/// A column as JSON answers carry it: decimals as text (no precision lost to
/// floats), everything else as it is.
pub(crate) fn json_column(c: &arrow::array::ArrayRef) -> Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    if carried_as_text(c.data_type()) {
        arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)
    } else {
        Ok(c.clone())
    }
}

/// A batch as JSON answers carry it (see [`json_column`]), its column names
/// kept; the batch itself, with nothing rebuilt, when no column changes.
pub(crate) fn json_batch(
    batch: &arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    if !batch.schema().fields().iter().any(|f| carried_as_text(f.data_type())) {
        return Ok(batch.clone());
    }
    let columns = batch.columns().iter().map(json_column).collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<arrow::datatypes::Field> = batch
        .schema()
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| arrow::datatypes::Field::new(f.name(), c.data_type().clone(), true))
        .collect();
    arrow::array::RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
}

/// A batch's rows as JSON arrays (columns renamed first: names may repeat;
/// decimals as strings, so no digit is lost to a float).
pub(crate) fn json_rows(batch: &arrow::array::RecordBatch) -> Result<Vec<Vec<Value>>, arrow::error::ArrowError> {
    let columns = batch.columns().iter().map(json_column).collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<arrow::datatypes::Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    let renamed = arrow::array::RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)?;
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(&renamed)?;
    writer.finish()?;
    let objects: Vec<serde_json::Map<String, Value>> =
        serde_json::from_slice(&writer.into_inner()).map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?;
    let n = batch.num_columns();
    Ok(objects
        .into_iter()
        .map(|mut o| (0..n).map(|i| o.remove(&format!("c{i}")).unwrap_or(Value::Null)).collect())
        .collect())
}
