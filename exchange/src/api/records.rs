//! Record lookups and verification for services: a key (or up to 1000) in,
//! the record as the caller may see it out, through the record index
//! (`gdx_catalog::lake::records`) rather than a query.
//!
//! The access plan is the one SQL uses (columns, masks, row filters, grants,
//! expiry). A lookup needs the key columns in clear for the caller, or it
//! could be used to guess identifiers behind a mask (`403`); a key outside
//! the caller's row filter answers exactly as a missing one. Verification
//! needs read access only and discloses nothing but match or no match.
//! Keys reach the audit log as keyed hashes only, never logs or metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use axum::Extension;
use axum::extract::{Path, State};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use gdx_catalog::Dataset;
use gdx_catalog::lake::records::LookupError;
use gdx_policies::{AccessPlan, HashKey, Mask};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::Caller;
use super::error::{ApiError, ApiResult, Problem};
use super::extract::{Json, Query};
use crate::state::AppState;

/// Keys a batch lookup takes at most.
pub const MAX_BATCH: usize = 1000;

/// How a caller's lookups of one dataset are governed, compiled once per access plan.
#[derive(Debug)]
pub struct Governance {
    filter: Option<Arc<dyn PhysicalExpr>>,
    outputs: Vec<(usize, Mask)>,
    schema: SchemaRef,
    keys_in_clear: bool,
    /// The key of the `hash` mask.
    key: HashKey,
}

/// Compiled lookup governance per (principal, dataset), valid while the access plan it came from is.
#[derive(Debug, Default)]
pub struct LookupPlans {
    cache: Mutex<HashMap<(String, String), Compiled>>,
    /// Delta versions of GDX versions, by (dataset, version).
    deltas: Mutex<HashMap<(String, i64), u64>>,
}

/// A compiled governance and the access plan it was compiled from.
type Compiled = (Weak<AccessPlan>, Arc<Governance>);

impl LookupPlans {
    async fn get(
        &self,
        state: &AppState,
        caller: &Caller,
        dataset: &Dataset,
        plan: &Arc<AccessPlan>,
    ) -> ApiResult<Arc<Governance>> {
        let key = (caller.principal.id.clone(), dataset.id.clone());
        if let Some((weak, g)) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && weak.upgrade().is_some_and(|p| Arc::ptr_eq(&p, plan))
        {
            return Ok(g.clone());
        }
        let reader = super::query::reader(state, &caller.principal).await?;
        let g = Arc::new(
            compile(dataset, plan, &reader, HashKey::new(state.secret.key())).map_err(|e| ApiError::internal(&e))?,
        );
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key, (Arc::downgrade(plan), g.clone()));
        Ok(g)
    }
}

fn compile(
    dataset: &Dataset,
    plan: &AccessPlan,
    reader: &gdx_policies::filter::Reader,
    key: HashKey,
) -> datafusion::error::Result<Governance> {
    let schema = Schema::new(
        dataset.arrow_schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    );
    let df_schema = DFSchema::try_from(schema.clone())?;
    let state = datafusion::prelude::SessionContext::new().state();
    let columns: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
    let filter = match crate::query::row_filter(&dataset.id, plan, reader, &columns, &state, &df_schema)? {
        Some(f) => Some(state.create_physical_expr(f, &df_schema)?),
        None => None,
    };
    let mut outputs = Vec::new();
    let mut fields = Vec::new();
    for c in &plan.columns {
        let i = schema.index_of(&c.name)?;
        outputs.push((i, c.mask));
        fields.push(Field::new(&c.name, c.mask.output_type(schema.field(i).data_type()), true));
    }
    let keys_in_clear = dataset.primary_key.iter().all(|k| plan.mask_of(k) == Some(Mask::None));
    Ok(Governance { filter, outputs, schema: Arc::new(Schema::new(fields)), keys_in_clear, key })
}

/// What a lookup reads: the dataset, the version, and how the caller sees it.
struct Target {
    dataset: Dataset,
    version: Option<(i64, u64)>,
    governance: Arc<Governance>,
}

async fn target(
    state: &AppState,
    caller: &Caller,
    id: &str,
    as_of: Option<i64>,
    need_clear_keys: bool,
) -> ApiResult<Target> {
    let dataset = state.catalog.store().dataset(id).await?;
    caller.audit.note(|n| n.datasets = vec![dataset.id.clone()]);
    let now = chrono::Utc::now();
    let plan = state.data.plan(&caller.principal, &dataset, now).map_err(|_| ApiError::denied())?;
    caller.within_quotas(state, [&dataset.id], now)?;
    if dataset.primary_key.is_empty() {
        return Err(ApiError::invalid("dataset", format!("{id} has no primary key: its records cannot be looked up")));
    }
    let governance = state.lookups.get(state, caller, &dataset, &plan).await?;
    if need_clear_keys && !governance.keys_in_clear {
        return Err(ApiError::new(
            super::error::ACCESS_DENIED,
            "the key columns are masked for you: a lookup needs them in clear (a grant can unmask them)",
        ));
    }
    let version = match as_of {
        Some(v) => {
            let version = state
                .catalog
                .store()
                .version(id, v)
                .await
                .map_err(|_| ApiError::invalid("as_of", format!("{id} has no version {v}")))?;
            version.delta_version.map(|d| (v, d as u64))
        }
        None => match dataset.current_version {
            Some(v) => delta_of(state, id, v).await?.map(|d| (v, d)),
            None => None,
        },
    };
    if let Some((v, _)) = version {
        caller.audit.note(|n| {
            n.versions.insert(dataset.id.clone(), v);
        });
    }
    Ok(Target { dataset, version, governance })
}

/// The Delta version of a GDX version (a committed version never changes, so
/// the answer is remembered).
async fn delta_of(state: &AppState, id: &str, version: i64) -> ApiResult<Option<u64>> {
    let key = (id.to_string(), version);
    if let Some(d) = state.lookups.deltas.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(Some(*d));
    }
    let Some(delta) = state.catalog.store().version(id, version).await?.delta_version else { return Ok(None) };
    let mut deltas = state.lookups.deltas.lock().unwrap_or_else(|p| p.into_inner());
    if deltas.len() > 100_000 {
        deltas.clear();
    }
    deltas.insert(key, delta as u64);
    Ok(Some(delta as u64))
}

fn lookup_error(e: LookupError) -> ApiError {
    match e {
        LookupError::BadKey { column, message } => ApiError::invalid(format!("key.{column}"), message),
        other => ApiError::internal(&other),
    }
}

/// The rows of `keys` as the caller sees them (masked, the caller's columns)
/// and, per key, its row among them when it exists within the caller's row
/// filter; `None` before the first version.
async fn governed(
    state: &AppState,
    t: &Target,
    keys: Vec<Vec<String>>,
) -> ApiResult<Option<(RecordBatch, Vec<Option<usize>>)>> {
    if t.version.is_none() {
        // Nothing pushed yet: every key is missing, once it is of the right type.
        gdx_catalog::lake::records::parse_keys(&t.dataset, &keys).map_err(lookup_error)?;
    }
    let Some((rows, index)) = in_clear(state, t, keys).await? else { return Ok(None) };
    let g = &t.governance;
    let shown = crate::query::govern(rows, None, &g.outputs, &g.schema, &g.key).map_err(|e| ApiError::internal(&e))?;
    Ok(Some((shown, index)))
}

/// Per key, its record as the caller sees it (or none: missing or outside
/// the row filter).
async fn fetch(state: &AppState, t: &Target, keys: Vec<Vec<String>>) -> ApiResult<Vec<Option<Value>>> {
    let n = keys.len();
    let Some((shown, index)) = governed(state, t, keys).await? else { return Ok(vec![None; n]) };
    let rows = super::query::json_rows(&shown).map_err(|e| ApiError::internal(&e))?;
    let names: Vec<&str> = t.governance.schema.fields().iter().map(|f| f.name().as_str()).collect();
    Ok(index
        .iter()
        .map(|i| {
            i.map(|i| {
                Value::Object(names.iter().zip(rows[i].iter()).map(|(n, v)| (n.to_string(), v.clone())).collect())
            })
        })
        .collect())
}

/// Row `row` of `shown` as one JSON object, written by Arrow's JSON writer
/// straight into bytes (every column named, nulls as `null`, decimals as
/// strings like SQL answers), without a `serde_json::Value` in between.
fn record_json(shown: &RecordBatch, row: usize) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let one = super::query::json_batch(&shown.slice(row, 1))?;
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::LineDelimited>(Vec::with_capacity(512));
    writer.write(&one)?;
    writer.finish()?;
    let mut out = writer.into_inner();
    while out.last().is_some_and(u8::is_ascii_whitespace) {
        out.pop();
    }
    Ok(out)
}

/// The rows of `keys` in clear and, per key, its row among them when it
/// exists within the caller's row filter; `None` before the first version.
async fn in_clear(
    state: &AppState,
    t: &Target,
    keys: Vec<Vec<String>>,
) -> ApiResult<Option<(RecordBatch, Vec<Option<usize>>)>> {
    let Some((_, delta)) = t.version else { return Ok(None) };
    let found = state.records.get(&state.lake, &t.dataset, delta, keys).await.map_err(lookup_error)?;
    let visible = visible_rows(&t.governance, &found.rows)?;
    let index = found.index.iter().map(|i| i.filter(|i| visible[*i])).collect();
    Ok(Some((found.rows, index)))
}

/// Which rows the caller's row filter lets through.
fn visible_rows(g: &Governance, rows: &RecordBatch) -> ApiResult<Vec<bool>> {
    let Some(filter) = &g.filter else { return Ok(vec![true; rows.num_rows()]) };
    let keep = filter.evaluate(rows).and_then(|v| v.into_array(rows.num_rows())).map_err(|e| ApiError::internal(&e))?;
    let keep =
        keep.as_any().downcast_ref::<arrow::array::BooleanArray>().ok_or_else(|| ApiError::internal(&"row filter"))?;
    Ok((0..keep.len()).map(|i| keep.is_valid(i) && keep.value(i)).collect())
}

/// A key as a client sends it: one value, or an object of key column → value.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Key {
    /// The value of a single-column key.
    One(String),
    /// The values of a composite key, by column.
    Columns(BTreeMap<String, String>),
}

/// A key's values in primary-key order, and how it is recorded as a subject.
fn key_values(dataset: &Dataset, key: &Key, field: &str) -> ApiResult<(Vec<String>, String)> {
    match key {
        Key::One(v) if dataset.primary_key.len() == 1 => Ok((vec![v.clone()], v.clone())),
        Key::One(_) => Err(ApiError::invalid(
            field,
            format!("{} has a composite key ({}): give each column", dataset.id, dataset.primary_key.join(", ")),
        )),
        Key::Columns(map) => {
            let mut values = Vec::new();
            for k in &dataset.primary_key {
                values
                    .push(map.get(k).cloned().ok_or_else(|| ApiError::invalid(format!("{field}.{k}"), "is required"))?);
            }
            if let Some(extra) = map.keys().find(|k| !dataset.primary_key.contains(k)) {
                return Err(ApiError::invalid(format!("{field}.{extra}"), "is not a key column"));
            }
            let subject = if values.len() == 1 { values[0].clone() } else { values.join("|") };
            Ok((values, subject))
        }
    }
}

/// One record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordAnswer {
    /// The record, its columns as the caller may see them.
    #[schema(value_type = Object)]
    pub record: Value,
    /// The GDX version read.
    pub version: i64,
}

/// `?as_of=N`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOf {
    /// Read this GDX version instead of the latest.
    pub as_of: Option<i64>,
}

/// The body of a found record: `{"record": {...}, "version": N}` as JSON bytes
/// (a [`RecordAnswer`]).
#[derive(Debug)]
pub struct RecordBody(Vec<u8>);

impl axum::response::IntoResponse for RecordBody {
    fn into_response(self) -> axum::response::Response {
        ([(axum::http::header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

async fn one(state: &AppState, caller: &Caller, id: &str, key: Key, as_of: Option<i64>) -> ApiResult<RecordBody> {
    let t = target(state, caller, id, as_of, true).await?;
    let (values, subject) = key_values(&t.dataset, &key, "key")?;
    caller.audit.note(|n| n.subjects = vec![subject]);
    let found = governed(state, &t, vec![values]).await?;
    let hit = found.as_ref().and_then(|(shown, index)| index[0].map(|row| (shown, row)));
    caller.audit.note(|n| n.rows = Some(u64::from(hit.is_some())));
    match (hit, t.version) {
        (Some((shown, row)), Some((version, _))) => {
            let record = record_json(shown, row).map_err(|e| ApiError::internal(&e))?;
            let mut body = Vec::with_capacity(record.len() + 32);
            body.extend_from_slice(b"{\"record\":");
            body.extend_from_slice(&record);
            body.extend_from_slice(format!(",\"version\":{version}}}").as_bytes());
            Ok(RecordBody(body))
        }
        _ => Err(ApiError::not_found("record", "with this key")),
    }
}

/// One record by its key (a dataset with a single-column primary key).
#[utoipa::path(get, operation_id = "get_record", path = "/api/v1/datasets/{id}/records/{key}", tag = "lookup",
    params(("id" = String, Path), ("key" = String, Path), AsOf),
    responses(
        (status = 200, description = "The record", body = RecordAnswer),
        (status = 404, description = "No such record (or outside the caller's rows)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, key)): Path<(String, String)>,
    Query(p): Query<AsOf>,
) -> ApiResult<RecordBody> {
    one(&state, &caller, &id, Key::One(key), p.as_of).await
}

/// One record by a composite key: `?col=value&col2=value2` (and `as_of`).
#[utoipa::path(get, operation_id = "get_record_by_columns", path = "/api/v1/datasets/{id}/records", tag = "lookup",
    params(("id" = String, Path), AsOf),
    responses(
        (status = 200, description = "The record", body = RecordAnswer),
        (status = 404, description = "No such record (or outside the caller's rows)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_by_columns(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(mut params): Query<BTreeMap<String, String>>,
) -> ApiResult<RecordBody> {
    let as_of = match params.remove("as_of") {
        Some(v) => Some(v.parse().map_err(|_| ApiError::invalid("as_of", "must be a version number"))?),
        None => None,
    };
    one(&state, &caller, &id, Key::Columns(params), as_of).await
}

/// A batch of keys.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchGet {
    /// Up to 1000 keys: values, or objects of key column → value.
    pub keys: Vec<Key>,
    /// Read this GDX version instead of the latest.
    pub as_of: Option<i64>,
}

/// The records of a batch.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAnswer {
    /// The records found, in the order of the keys (once per distinct key).
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<Value>,
    /// The keys not found (or outside the caller's rows), as sent.
    #[schema(value_type = Vec<serde_json::Value>)]
    pub missing: Vec<Value>,
    /// The GDX version read.
    pub version: Option<i64>,
}

/// Up to 1000 records in one request.
#[utoipa::path(post, operation_id = "batch_get_records", path = "/api/v1/datasets/{id}/records:batchGet", tag = "lookup",
    params(("id" = String, Path)),
    request_body = BatchGet,
    responses((status = 200, description = "Found and missing", body = BatchAnswer)))]
pub async fn batch_get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<BatchGet>,
) -> ApiResult<axum::Json<BatchAnswer>> {
    if body.keys.is_empty() || body.keys.len() > MAX_BATCH {
        return Err(ApiError::invalid("keys", format!("must hold 1 to {MAX_BATCH} keys")));
    }
    let t = target(&state, &caller, &id, body.as_of, true).await?;
    let mut values = Vec::with_capacity(body.keys.len());
    let mut subjects = Vec::with_capacity(body.keys.len());
    for (i, k) in body.keys.iter().enumerate() {
        let (v, s) = key_values(&t.dataset, k, &format!("keys[{i}]"))?;
        values.push(v);
        subjects.push(s);
    }
    subjects.sort();
    subjects.dedup();
    caller.audit.note(|n| n.subjects = subjects);
    let found = fetch(&state, &t, values).await?;
    let mut records = Vec::new();
    let mut missing = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (key, record) in body.keys.iter().zip(found) {
        let sent = match key {
            Key::One(v) => Value::String(v.clone()),
            Key::Columns(m) => serde_json::to_value(m).unwrap_or(Value::Null),
        };
        match record {
            Some(r) => {
                if seen.insert(sent.to_string()) {
                    records.push(r);
                }
            }
            None => missing.push(sent),
        }
    }
    caller.audit.note(|n| n.rows = Some(records.len() as u64));
    Ok(axum::Json(BatchAnswer { records, missing, version: t.version.map(|(v, _)| v) }))
}

/// A verification: does the record with this key have these values?
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The key: a value, or an object of key column → value.
    pub key: Key,
    /// Column → the value to check (as text; numbers are compared as written).
    #[schema(value_type = Object)]
    pub fields: BTreeMap<String, Value>,
    /// Check against this GDX version instead of the latest.
    pub as_of: Option<i64>,
}

/// Whether the record exists and which fields match.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyAnswer {
    /// Whether a record with this key exists (within the caller's rows).
    pub found: bool,
    /// Per field asked: whether it matches.
    pub matches: BTreeMap<String, bool>,
}

/// Verification without disclosure (身份核验): needs read access to the
/// dataset and the fields among the caller's readable columns, not clear keys.
#[utoipa::path(post, operation_id = "verify_record", path = "/api/v1/datasets/{id}/records:verify", tag = "lookup",
    params(("id" = String, Path)),
    request_body = VerifyRequest,
    responses((status = 200, description = "Match or no match", body = VerifyAnswer)))]
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<VerifyRequest>,
) -> ApiResult<axum::Json<VerifyAnswer>> {
    let t = target(&state, &caller, &id, body.as_of, false).await?;
    let (values, subject) = key_values(&t.dataset, &body.key, "key")?;
    caller.audit.note(|n| n.subjects = vec![subject]);
    if body.fields.is_empty() {
        return Err(ApiError::invalid("fields", "must name at least one column"));
    }
    let readable: Vec<&str> = t.governance.schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut asked = Vec::new();
    for (name, value) in &body.fields {
        if !readable.contains(&name.as_str()) {
            return Err(ApiError::invalid(format!("fields.{name}"), "is not a column you may read"));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(ApiError::invalid(format!("fields.{name}"), "must be a string or a number")),
        };
        asked.push((name.clone(), text));
    }
    let mut matches: BTreeMap<String, bool> = asked.iter().map(|(n, _)| (n.clone(), false)).collect();
    let Some((rows, index)) = in_clear(&state, &t, vec![values]).await? else {
        return Ok(axum::Json(VerifyAnswer { found: false, matches }));
    };
    let Some(row) = index[0] else {
        caller.audit.note(|n| n.rows = Some(0));
        return Ok(axum::Json(VerifyAnswer { found: false, matches }));
    };
    let options = arrow::util::display::FormatOptions::default();
    for (name, text) in &asked {
        let column = rows.column_by_name(name).ok_or_else(|| ApiError::internal(&"verified column"))?;
        let stored = if column.is_null(row) {
            None
        } else {
            arrow::util::display::ArrayFormatter::try_new(column.as_ref(), &options)
                .map(|f| f.value(row).to_string())
                .ok()
        };
        matches.insert(name.clone(), stored.as_deref().is_some_and(|s| s.trim() == text.trim()));
    }
    caller.audit.note(|n| n.rows = Some(1));
    Ok(axum::Json(VerifyAnswer { found: true, matches }))
}
