//! Record lookups by primary key, without a scan and without planning SQL.
//!
//! Data files are immutable, so the index is kept per data file: a sidecar
//! (`<data-dir>/index/<department>/<name>/<file>.keys`) holding, for every row
//! of the file, the 64-bit hash of its key (Arrow's row encoding of the key
//! columns, hashed with XXH3) and the row's number, sorted by hash. A version
//! of the table is the set of files its Delta snapshot lists, so the index of
//! any version is the sidecars of its files: nothing is copied per version,
//! and `as_of` costs no more than the latest. A primary key lives in one file
//! of a version; a lookup binary-searches each file's sidecar, reads the
//! candidate row from the Parquet file (page index: only the pages holding it)
//! and compares the key itself, so a hash collision cannot return a wrong row.
//!
//! Sidecars are written when a version is committed ([`RecordIndex::snapshot`]
//! after the commit), kept across restarts, and built from the data file
//! whenever one is missing (a crash before it was written, a deleted index,
//! compaction's new files), so the index always catches up with the lake.
//! Sidecars are written to a temporary name and renamed: never half-written.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arrow::array::{ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::CastOptions;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};

use super::{Lake, LakeError, delta};
use crate::model::Dataset;

/// Versions whose file lists are kept in memory.
const CACHED_VERSIONS: usize = 64;
const MAGIC: &[u8; 8] = b"GDXKEYS1";

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A key value does not fit its column's type.
    #[error("{column}: {message}")]
    BadKey {
        /// The key column.
        column: String,
        /// Why.
        message: String,
    },
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A data file or sidecar could not be read or written.
    #[error("record index at {}: {message}", path.display())]
    Index {
        /// The file.
        path: PathBuf,
        /// What happened.
        message: String,
    },
}

fn index_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> LookupError + '_ {
    move |e| LookupError::Index { path: path.to_path_buf(), message: e.to_string() }
}

/// One data file and its sorted key hashes.
#[derive(Debug)]
pub struct FileKeys {
    data: PathBuf,
    entries: Vec<(u64, u32)>,
    meta: OnceLock<ArrowReaderMetadata>,
}

impl FileKeys {
    /// Row numbers of the file whose key hashes to `h`.
    fn rows(&self, h: u64) -> impl Iterator<Item = u32> + '_ {
        let start = self.entries.partition_point(|(k, _)| *k < h);
        self.entries[start..].iter().take_while(move |(k, _)| *k == h).map(|(_, r)| *r)
    }

    fn metadata(&self) -> Result<&ArrowReaderMetadata, LookupError> {
        if let Some(m) = self.meta.get() {
            return Ok(m);
        }
        let file = File::open(&self.data).map_err(|e| index_err(&self.data)(&e))?;
        let m = ArrowReaderMetadata::load(
            &file,
            ArrowReaderOptions::new().with_offset_index_policy(parquet::file::metadata::PageIndexPolicy::Optional),
        )
        .map_err(|e| index_err(&self.data)(&e))?;
        Ok(self.meta.get_or_init(|| m))
    }
}

/// The files of one version of a dataset, with their key indexes.
#[derive(Debug)]
pub struct Snapshot {
    files: Vec<Arc<FileKeys>>,
}

impl Snapshot {
    /// Rows in the version.
    pub fn rows(&self) -> usize {
        self.files.iter().map(|f| f.entries.len()).sum()
    }
}

/// The answer to a batch of keys: the rows found (the dataset's columns, in
/// clear) and, per key asked, its row in `rows`.
#[derive(Debug)]
pub struct Found {
    /// The rows found, at most one per distinct key.
    pub rows: RecordBatch,
    /// For each key asked, in order: its row in `rows`, if found.
    pub index: Vec<Option<usize>>,
}

/// The record index of the lake's datasets.
#[derive(Debug)]
pub struct RecordIndex {
    root: PathBuf,
    files: Mutex<HashMap<PathBuf, Weak<FileKeys>>>,
    versions: Mutex<VecDeque<(VersionKey, Arc<Snapshot>)>>,
}

/// A dataset id and a Delta version.
type VersionKey = (String, u64);

impl RecordIndex {
    /// The index kept under `root` (`<data-dir>/index`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), files: Mutex::default(), versions: Mutex::default() }
    }

    fn folder(&self, dataset: &Dataset) -> PathBuf {
        self.root.join(&dataset.department).join(&dataset.name)
    }

    /// The files of `dataset` at `delta_version` with their key indexes,
    /// building any sidecar that is missing.
    pub async fn snapshot(
        &self,
        lake: &Lake,
        dataset: &Dataset,
        delta_version: u64,
    ) -> Result<Arc<Snapshot>, LookupError> {
        let cache_key = (dataset.id.clone(), delta_version);
        if let Some(s) = self.cached(&cache_key) {
            return Ok(s);
        }
        let table = lake.open_version(dataset, delta_version).await?;
        let table_dir = lake.table_path(dataset);
        let paths: Vec<String> =
            table.snapshot().map_err(delta(&dataset.id))?.log_data().iter().map(|f| f.path().to_string()).collect();
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let data = table_dir.join(&path);
            let existing = self.loaded(&data);
            let keys = match existing {
                Some(k) => k,
                None => {
                    let sidecar = self.folder(dataset).join(format!("{}.keys", path.replace('/', "%")));
                    let (d, s, ds) = (data.clone(), sidecar, dataset.clone());
                    let keys = tokio::task::spawn_blocking(move || load_or_build(&ds, &d, &s))
                        .await
                        .map_err(|e| index_err(&data)(&e))??;
                    let keys = Arc::new(keys);
                    self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(data, Arc::downgrade(&keys));
                    keys
                }
            };
            files.push(keys);
        }
        let snapshot = Arc::new(Snapshot { files });
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        versions.push_front((cache_key, snapshot.clone()));
        versions.truncate(CACHED_VERSIONS);
        Ok(snapshot)
    }

    fn cached(&self, key: &VersionKey) -> Option<Arc<Snapshot>> {
        let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let i = versions.iter().position(|(k, _)| k == key)?;
        let entry = versions.remove(i)?;
        let snapshot = entry.1.clone();
        versions.push_front(entry);
        Some(snapshot)
    }

    fn loaded(&self, data: &Path) -> Option<Arc<FileKeys>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let found = files.get(data).and_then(Weak::upgrade);
        if found.is_none() {
            files.remove(data);
        }
        found
    }

    /// Removes the sidecars of data files no longer in the lake (after vacuum)
    /// and forgets the dataset's cached versions.
    pub fn sweep(&self, lake: &Lake, dataset: &Dataset) {
        self.versions.lock().unwrap_or_else(|p| p.into_inner()).retain(|((id, _), _)| id != &dataset.id);
        let Ok(entries) = std::fs::read_dir(self.folder(dataset)) else { return };
        let table_dir = lake.table_path(dataset);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(data) = name.strip_suffix(".keys") else { continue };
            if !table_dir.join(data.replace('%', "/")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// The rows of `keys` (one `Vec` of key values per key, in the order of
    /// the dataset's primary key) at `delta_version`.
    pub async fn get(
        &self,
        lake: &Lake,
        dataset: &Dataset,
        delta_version: u64,
        keys: Vec<Vec<String>>,
    ) -> Result<Found, LookupError> {
        let wanted = parse_keys(dataset, &keys)?;
        let snapshot = self.snapshot(lake, dataset, delta_version).await?;
        let dataset = dataset.clone();
        tokio::task::spawn_blocking(move || find(&dataset, &snapshot, &wanted, keys.len()))
            .await
            .map_err(|e| LookupError::Index { path: PathBuf::new(), message: e.to_string() })?
    }
}

/// The key columns of a dataset as Arrow sort fields.
fn key_fields(dataset: &Dataset) -> Vec<(String, arrow::datatypes::DataType)> {
    dataset
        .primary_key
        .iter()
        .map(|k| {
            let t = dataset.column(k).map(|c| c.column_type.arrow_type()).unwrap_or(arrow::datatypes::DataType::Utf8);
            (k.clone(), t)
        })
        .collect()
}

fn converter(dataset: &Dataset) -> Result<RowConverter, arrow::error::ArrowError> {
    RowConverter::new(key_fields(dataset).into_iter().map(|(_, t)| SortField::new(t)).collect())
}

fn hash(row: &[u8]) -> u64 {
    twox_hash::XxHash3_128::oneshot(row) as u64
}

/// Key values typed as their columns: one array per key column.
pub fn parse_keys(dataset: &Dataset, keys: &[Vec<String>]) -> Result<Vec<ArrayRef>, LookupError> {
    let fields = key_fields(dataset);
    let options = CastOptions { safe: false, ..CastOptions::default() };
    fields
        .iter()
        .enumerate()
        .map(|(i, (name, t))| {
            let texts: StringArray = keys.iter().map(|k| k.get(i).map(String::as_str)).collect();
            arrow::compute::cast_with_options(&texts, t, &options)
                .map_err(|e| LookupError::BadKey { column: name.clone(), message: format!("not a valid {}: {e}", t) })
        })
        .collect()
}

/// Reads a sidecar, or builds it from the data file when it is missing or unreadable.
fn load_or_build(dataset: &Dataset, data: &Path, sidecar: &Path) -> Result<FileKeys, LookupError> {
    if let Some(entries) = read_sidecar(sidecar) {
        return Ok(FileKeys { data: data.to_path_buf(), entries, meta: OnceLock::new() });
    }
    let started = std::time::Instant::now();
    let entries = build(dataset, data)?;
    let err = index_err(sidecar);
    if let Some(dir) = sidecar.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let tmp = sidecar.with_extension(format!("keys.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        out.write_all(MAGIC)?;
        out.write_all(&(entries.len() as u64).to_le_bytes())?;
        for (h, r) in &entries {
            out.write_all(&h.to_le_bytes())?;
            out.write_all(&r.to_le_bytes())?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, sidecar)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(&e));
    }
    tracing::debug!(dataset = %dataset.id, rows = entries.len(), ms = started.elapsed().as_millis() as u64, "record index of a data file built");
    Ok(FileKeys { data: data.to_path_buf(), entries, meta: OnceLock::new() })
}

fn read_sidecar(path: &Path) -> Option<Vec<(u64, u32)>> {
    let mut bytes = Vec::new();
    File::open(path).ok()?.read_to_end(&mut bytes).ok()?;
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return None;
    }
    let n = u64::from_le_bytes(bytes[8..16].try_into().ok()?) as usize;
    if bytes.len() != 16 + n * 12 {
        return None;
    }
    let entries = bytes[16..]
        .chunks_exact(12)
        .map(|c| {
            let (h, r) = c.split_at(8);
            (u64::from_le_bytes(h.try_into().unwrap_or_default()), u32::from_le_bytes(r.try_into().unwrap_or_default()))
        })
        .collect::<Vec<_>>();
    entries.is_sorted().then_some(entries)
}

/// The sorted key hashes of a data file's rows.
fn build(dataset: &Dataset, data: &Path) -> Result<Vec<(u64, u32)>, LookupError> {
    let err = index_err(data);
    let file = File::open(data).map_err(|e| err(&e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(&e))?.with_batch_size(64 * 1024);
    let names: Vec<&str> = dataset.primary_key.iter().map(String::as_str).collect();
    let mask = ProjectionMask::columns(builder.parquet_schema(), names.iter().copied());
    let reader = builder.with_projection(mask).build().map_err(|e| err(&e))?;
    let converter = converter(dataset).map_err(|e| err(&e))?;
    let fields = key_fields(dataset);
    let mut entries = Vec::new();
    let mut row = 0u32;
    for batch in reader {
        let batch = batch.map_err(|e| err(&e))?;
        let columns = key_columns(&batch, &fields).map_err(|e| err(&e))?;
        let rows = converter.convert_columns(&columns).map_err(|e| err(&e))?;
        for r in rows.iter() {
            entries.push((hash(r.as_ref()), row));
            row += 1;
        }
    }
    entries.sort_unstable();
    Ok(entries)
}

fn key_columns(
    batch: &RecordBatch,
    fields: &[(String, arrow::datatypes::DataType)],
) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    fields
        .iter()
        .map(|(name, t)| {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| arrow::error::ArrowError::SchemaError(format!("key column {name} missing")))?;
            if c.data_type() == t { Ok(c.clone()) } else { arrow::compute::cast(c, t) }
        })
        .collect()
}

/// Finds each key's row: candidates by hash in every file, read together per
/// file, kept when their key equals the one asked.
fn find(dataset: &Dataset, snapshot: &Snapshot, wanted: &[ArrayRef], n: usize) -> Result<Found, LookupError> {
    let schema = nullable(&dataset.arrow_schema());
    let arrow_err = |e: &dyn std::fmt::Display| LookupError::Index { path: PathBuf::new(), message: e.to_string() };
    let converter = converter(dataset).map_err(|e| arrow_err(&e))?;
    let asked = converter.convert_columns(wanted).map_err(|e| arrow_err(&e))?;
    // Per file: the candidate rows and the keys they may answer.
    let mut candidates: Vec<Vec<(u32, usize)>> = vec![Vec::new(); snapshot.files.len()];
    for k in 0..n {
        let h = hash(asked.row(k).as_ref());
        for (f, file) in snapshot.files.iter().enumerate() {
            candidates[f].extend(file.rows(h).map(|r| (r, k)));
        }
    }
    let fields = key_fields(dataset);
    let mut batches: Vec<RecordBatch> = Vec::new();
    // For each key asked: (batch, row) where it was found.
    let mut hits: Vec<Option<(usize, usize)>> = vec![None; n];
    for (f, wanted_rows) in candidates.into_iter().enumerate() {
        if wanted_rows.is_empty() {
            continue;
        }
        let mut rows: Vec<u32> = wanted_rows.iter().map(|(r, _)| *r).collect();
        rows.sort_unstable();
        rows.dedup();
        let file = &snapshot.files[f];
        let batch = read_rows(file, &rows, &schema)?;
        let err = index_err(&file.data);
        let found =
            converter.convert_columns(&key_columns(&batch, &fields).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
        for (r, k) in &wanted_rows {
            if let Ok(i) = rows.binary_search(r)
                && hits[*k].is_none()
                && found.row(i) == asked.row(*k)
            {
                hits[*k] = Some((batches.len(), i));
            }
        }
        batches.push(batch);
    }
    // One output row per distinct hit (a key asked twice is answered by one row).
    let mut picked: Vec<(usize, usize)> = Vec::new();
    let mut index = Vec::with_capacity(n);
    for hit in hits {
        index.push(hit.map(|h| match picked.iter().position(|p| *p == h) {
            Some(i) => i,
            None => {
                picked.push(h);
                picked.len() - 1
            }
        }));
    }
    let rows = if picked.is_empty() {
        RecordBatch::new_empty(schema)
    } else {
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        arrow::compute::interleave_record_batch(&refs, &picked).map_err(|e| arrow_err(&e))?
    };
    Ok(Found { rows, index })
}

fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()))
}

/// The given rows (sorted, distinct) of a data file, aligned to the dataset's schema.
fn read_rows(file: &FileKeys, rows: &[u32], schema: &SchemaRef) -> Result<RecordBatch, LookupError> {
    let err = index_err(&file.data);
    let meta = file.metadata()?.clone();
    let mut selectors = Vec::with_capacity(rows.len() * 2);
    let mut at = 0usize;
    for r in rows {
        let r = *r as usize;
        if r > at {
            selectors.push(RowSelector::skip(r - at));
        }
        selectors.push(RowSelector::select(1));
        at = r + 1;
    }
    let f = File::open(&file.data).map_err(|e| err(&e))?;
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(f, meta)
        .with_row_selection(RowSelection::from(selectors))
        .with_batch_size(rows.len().max(1))
        .build()
        .map_err(|e| err(&e))?;
    let mut batches = Vec::new();
    for b in reader {
        batches.push(align(&b.map_err(|e| err(&e))?, schema).map_err(|e| err(&e))?);
    }
    arrow::compute::concat_batches(schema, &batches).map_err(|e| err(&e))
}

/// A batch of a data file as the dataset's schema: columns by name, cast to
/// the current type, null where an older file lacks a column.
fn align(batch: &RecordBatch, schema: &Schema) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::new(schema.clone()), columns)
}
