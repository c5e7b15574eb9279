//! Record lookups by primary key, without a scan and without planning SQL.
//!
//! Data files are immutable, so the index is kept per data file: a sidecar
//! (`<data-dir>/index/<department>/<name>/<file>.keys`) holding every row of
//! the file in Arrow's row format, and a directory of the rows by the 64-bit
//! hash of their key (XXH3 of the key columns' row encoding), sorted. A
//! version of the table is the set of files its Delta snapshot lists, so the
//! index of any version is the sidecars of its files: nothing is copied per
//! version, and `as_of` costs what the latest does. A primary key lives in one
//! file of a version; a lookup binary-searches each file's directory (kept in
//! memory), reads the candidate rows with one positioned read each, decodes
//! them and compares the key itself, so a hash collision cannot return a
//! wrong row. Nothing is decompressed: a Parquet page of each column per
//! lookup cost ten times more (see `docs/performance.md`).
//!
//! Sidecars are written when a version is committed ([`RecordIndex::snapshot`]
//! after the commit), kept across restarts, and built from the data file
//! whenever one is missing or of another format (a crash before it was
//! written, a deleted index, compaction's new files, another Arrow release:
//! the row format is not stable across them), so the index always catches
//! up with the lake. Sidecars are written to a temporary name and renamed.
//!
//! Layout: `GDXKEYS2`, a JSON header (Arrow release, the columns and their
//! types when it was built), the rows, then the directory (hash, offset,
//! length per row, sorted by hash), and last the directory's offset and row
//! count.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::write::conform;
use super::{Lake, LakeError, delta};
use crate::model::{ColumnType, Dataset};

/// Keys a lookup answers on the calling thread; more go to a blocking thread.
const INLINE_KEYS: usize = 16;
const MAGIC: &[u8; 8] = b"GDXKEYS2";

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

/// One data file's sidecar: its rows' key hashes, sorted, with where each
/// row's bytes are, and the open sidecar to read them from.
#[derive(Debug)]
pub struct FileKeys {
    sidecar: PathBuf,
    file: File,
    /// The schema the rows were encoded with, and their decoder.
    schema: SchemaRef,
    rows: RowConverter,
    hashes: Vec<u64>,
    offsets: Vec<u64>,
    lengths: Vec<u32>,
    /// Where the hashes of each leading-bits prefix start ([`Buckets`]).
    buckets: Buckets,
    /// Bytes of [`READ_AHEAD`] this sidecar holds, given back when it is dropped.
    read_ahead: u64,
}

impl Drop for FileKeys {
    fn drop(&mut self) {
        READ_AHEAD.give(self.read_ahead);
    }
}

/// How many bytes of sidecar rows may be read ahead into the page cache at
/// a time, across the process: a quarter of the machine's memory. A sidecar
/// that would pass it is not read ahead (its rows are read from disk as
/// lookups ask for them), so that a lake whose indexes outgrow memory does
/// not push everything else out of the page cache.
static READ_AHEAD: Budget = Budget::new();

/// A process-wide allowance of bytes, taken and given back.
#[derive(Debug)]
struct Budget {
    limit: std::sync::OnceLock<u64>,
    used: std::sync::atomic::AtomicU64,
}

impl Budget {
    const fn new() -> Self {
        Self { limit: std::sync::OnceLock::new(), used: std::sync::atomic::AtomicU64::new(0) }
    }

    #[cfg(test)]
    fn with_limit(limit: u64) -> Self {
        let budget = Self::new();
        let _ = budget.limit.set(limit);
        budget
    }

    fn limit(&self) -> u64 {
        *self.limit.get_or_init(|| memory_total().unwrap_or(0) / 4)
    }

    /// Takes `bytes` if they fit, and says whether they did.
    fn take(&self, bytes: u64) -> bool {
        use std::sync::atomic::Ordering;
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        self.used.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The machine's memory in bytes (`MemTotal` of `/proc/meminfo`), when known.
fn memory_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim();
    kib.parse::<u64>().ok()?.checked_mul(1024)
}

/// A radix table over a sorted list of uniformly spread hashes: for each
/// value of their top `bits` bits, the index of the first hash with that
/// prefix or a greater one, and one more entry for the end. A lookup reads
/// two neighbouring entries and then about two hashes, where a binary search
/// of a file of a million rows touches some twenty cache lines far apart.
#[derive(Debug)]
struct Buckets {
    shift: u32,
    starts: Vec<u32>,
}

impl Buckets {
    /// About four hashes a bucket: 4 bytes a bucket, a byte a row.
    fn new(hashes: &[u64]) -> Option<Self> {
        let n = u32::try_from(hashes.len()).ok()?;
        let bits = (u32::BITS - (n / 4).leading_zeros()).max(1);
        let shift = u64::BITS - bits;
        let mut starts = Vec::with_capacity((1usize << bits) + 1);
        let mut i = 0u32;
        for prefix in 0..(1u64 << bits) {
            while (i as usize) < hashes.len() && (hashes[i as usize] >> shift) < prefix {
                i += 1;
            }
            starts.push(i);
        }
        starts.push(n);
        Some(Self { shift, starts })
    }

    /// The indexes of `hashes` (the list the table was built from) equal to `h`.
    fn equal(&self, hashes: &[u64], h: u64) -> std::ops::Range<usize> {
        let prefix = (h >> self.shift) as usize;
        let (from, to) = (self.starts[prefix] as usize, self.starts[prefix + 1] as usize);
        let start = from + hashes[from..to].partition_point(|k| *k < h);
        let end = start + hashes[start..to].iter().take_while(|k| **k == h).count();
        start..end
    }
}

impl FileKeys {
    /// Directory entries whose key hashes to `h`.
    fn candidates(&self, h: u64) -> std::ops::Range<usize> {
        self.buckets.equal(&self.hashes, h)
    }

    /// The encoded row of directory entry `i`.
    fn row_bytes(&self, i: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.lengths[i] as usize];
        self.file.read_exact_at(&mut buf, self.offsets[i])?;
        Ok(buf)
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
        self.files.iter().map(|f| f.hashes.len()).sum()
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
    /// One builder of a dataset's missing sidecars at a time: a lookup that
    /// arrives while the commit's index is being built waits for it.
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How each dataset's rows read back, by dataset id ([`Layout`]).
    layouts: Mutex<HashMap<String, Arc<Layout>>>,
}

/// How a dataset's rows read back: its schema (every column nullable, as
/// in the sidecars), its key columns and their row encoder. Built once per
/// dataset and kept while its columns and key stay the same, so that a
/// lookup allocates none of them.
#[derive(Debug)]
struct Layout {
    columns: Vec<(String, ColumnType)>,
    primary_key: Vec<String>,
    schema: SchemaRef,
    keys: Vec<(String, DataType)>,
    encoder: RowConverter,
}

impl Layout {
    fn of(dataset: &Dataset) -> Result<Self, arrow::error::ArrowError> {
        let keys = key_fields(dataset);
        Ok(Self {
            columns: dataset.columns.iter().map(|c| (c.name.clone(), c.column_type)).collect(),
            primary_key: dataset.primary_key.clone(),
            schema: nullable(&dataset.arrow_schema()),
            encoder: RowConverter::new(keys.iter().map(|(_, t)| SortField::new(t.clone())).collect())?,
            keys,
        })
    }

    /// Whether `dataset` still has the columns and key this was built from.
    fn fits(&self, dataset: &Dataset) -> bool {
        self.primary_key == dataset.primary_key
            && self.columns.len() == dataset.columns.len()
            && self.columns.iter().zip(&dataset.columns).all(|((n, t), c)| *n == c.name && *t == c.column_type)
    }
}

/// A dataset id and a Delta version.
type VersionKey = (String, u64);

impl RecordIndex {
    /// Versions (of any datasets) whose file lists and key directories are
    /// kept in memory; older ones are loaded again when asked for.
    pub const KEPT_VERSIONS: usize = 64;

    /// The index kept under `root` (`<data-dir>/index`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: Mutex::default(),
            versions: Mutex::default(),
            building: Mutex::default(),
            layouts: Mutex::default(),
        }
    }

    fn layout(&self, dataset: &Dataset) -> Result<Arc<Layout>, LookupError> {
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = layouts.get(&dataset.id).filter(|l| l.fits(dataset)) {
            return Ok(l.clone());
        }
        let layout = Arc::new(
            Layout::of(dataset)
                .map_err(|e| LookupError::Index { path: self.folder(dataset), message: e.to_string() })?,
        );
        layouts.insert(dataset.id.clone(), layout.clone());
        Ok(layout)
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
        let lock =
            self.building.lock().unwrap_or_else(|p| p.into_inner()).entry(dataset.id.clone()).or_default().clone();
        let _building = lock.lock().await;
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
                    let sidecar = self.folder(dataset).join(sidecar_name(&path));
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
        versions.truncate(Self::KEPT_VERSIONS);
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
    /// and any left half-written, and forgets the dataset's cached versions.
    pub fn sweep(&self, lake: &Lake, dataset: &Dataset) {
        self.versions.lock().unwrap_or_else(|p| p.into_inner()).retain(|((id, _), _)| id != &dataset.id);
        let Ok(entries) = std::fs::read_dir(self.folder(dataset)) else { return };
        let table_dir = lake.table_path(dataset);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // A sidecar left half-written by a process that stopped while building it.
            if name.contains(".keys.tmp") {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let Some(data) = data_path_of(&name) else { continue };
            if !table_dir.join(data).exists() {
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
        let layout = self.layout(dataset)?;
        let wanted = typed_keys(&layout.keys, &keys)?;
        let snapshot = self.snapshot(lake, dataset, delta_version).await?;
        // A few positioned reads of a file the page cache holds and their
        // decoding: cheaper inline than a hand-off to a blocking thread. A
        // large batch goes to one.
        if keys.len() <= INLINE_KEYS {
            return find(&layout, &snapshot, &wanted, keys.len());
        }
        tokio::task::spawn_blocking(move || find(&layout, &snapshot, &wanted, keys.len()))
            .await
            .map_err(|e| LookupError::Index { path: PathBuf::new(), message: e.to_string() })?
    }
}

/// The sidecar's file name of a data file (its path in the table, flattened).
fn sidecar_name(data: &str) -> String {
    format!("{}.keys", data.replace('/', "%"))
}

/// The data file's path in the table of a sidecar's file name.
fn data_path_of(sidecar: &str) -> Option<String> {
    sidecar.strip_suffix(".keys").map(|d| d.replace('%', "/"))
}

/// The key columns of a dataset as Arrow sort fields.
fn key_fields(dataset: &Dataset) -> Vec<(String, DataType)> {
    dataset
        .primary_key
        .iter()
        .map(|k| {
            let t = dataset.column(k).map(|c| c.column_type.arrow_type()).unwrap_or(DataType::Utf8);
            (k.clone(), t)
        })
        .collect()
}

fn hash(row: &[u8]) -> u64 {
    twox_hash::XxHash3_128::oneshot(row) as u64
}

/// Key values typed as their columns: one array per key column.
pub fn parse_keys(dataset: &Dataset, keys: &[Vec<String>]) -> Result<Vec<ArrayRef>, LookupError> {
    typed_keys(&key_fields(dataset), keys)
}

fn typed_keys(fields: &[(String, DataType)], keys: &[Vec<String>]) -> Result<Vec<ArrayRef>, LookupError> {
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

/// A writer that knows how many bytes it wrote.
struct Counted {
    out: std::io::BufWriter<File>,
    at: u64,
}

impl Counted {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.at += bytes.len() as u64;
        Ok(())
    }
}

/// What a sidecar's header says.
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Header {
    /// The Arrow release whose row format the rows are in.
    arrow: String,
    /// The columns the rows hold, with their types.
    columns: Vec<(String, ColumnType)>,
}

fn arrow_release() -> String {
    // The row format may change between Arrow releases: sidecars of another are rebuilt.
    format!("arrow-row {}", ROW_FORMAT_RELEASE)
}

/// The Arrow release this build encodes rows with (the workspace pins arrow 59).
const ROW_FORMAT_RELEASE: &str = "59";

/// Reads a sidecar, or builds it from the data file when it is missing,
/// damaged or of another format.
fn load_or_build(dataset: &Dataset, data: &Path, sidecar: &Path) -> Result<FileKeys, LookupError> {
    if let Some(keys) = read_sidecar(sidecar) {
        return Ok(keys);
    }
    let started = std::time::Instant::now();
    build(dataset, data, sidecar)?;
    let keys = read_sidecar(sidecar).ok_or_else(|| LookupError::Index {
        path: sidecar.to_path_buf(),
        message: "unreadable after writing".into(),
    })?;
    tracing::debug!(dataset = %dataset.id, rows = keys.hashes.len(), ms = started.elapsed().as_millis() as u64, "record index of a data file built");
    Ok(keys)
}

fn read_sidecar(path: &Path) -> Option<FileKeys> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut head = [0u8; 12];
    file.read_exact_at(&mut head, 0).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let header_len = u32::from_le_bytes(head[8..12].try_into().ok()?) as u64;
    let mut header = vec![0u8; usize::try_from(header_len).ok()?];
    file.read_exact_at(&mut header, 12).ok()?;
    let header: Header = serde_json::from_slice(&header).ok()?;
    if header.arrow != arrow_release() || size < 16 {
        return None;
    }
    let mut tail = [0u8; 16];
    file.read_exact_at(&mut tail, size - 16).ok()?;
    let directory = u64::from_le_bytes(tail[..8].try_into().ok()?);
    let n = usize::try_from(u64::from_le_bytes(tail[8..].try_into().ok()?)).ok()?;
    if directory.checked_add(n as u64 * 20)? != size - 16 {
        return None;
    }
    let mut bytes = vec![0u8; n * 20];
    file.read_exact_at(&mut bytes, directory).ok()?;
    let (mut hashes, mut offsets, mut lengths) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for e in bytes.chunks_exact(20) {
        hashes.push(u64::from_le_bytes(e[..8].try_into().ok()?));
        let offset = u64::from_le_bytes(e[8..16].try_into().ok()?);
        let length = u32::from_le_bytes(e[16..].try_into().ok()?);
        if offset.checked_add(u64::from(length))? > directory {
            return None;
        }
        offsets.push(offset);
        lengths.push(length);
    }
    if !hashes.is_sorted() {
        return None;
    }
    let schema = Arc::new(Schema::new(
        header.columns.iter().map(|(n, t)| Field::new(n, t.arrow_type(), true)).collect::<Vec<_>>(),
    ));
    let rows =
        RowConverter::new(schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect()).ok()?;
    let buckets = Buckets::new(&hashes)?;
    let read_ahead = if READ_AHEAD.take(directory) {
        start_read_ahead(path, &file, directory);
        directory
    } else {
        tracing::debug!(sidecar = %path.display(), bytes = directory, "record index not read ahead: over a quarter of memory");
        0
    };
    Some(FileKeys { sidecar: path.to_path_buf(), file, schema, rows, hashes, offsets, lengths, buckets, read_ahead })
}

/// Asks the kernel to read the first `len` bytes of a sidecar (its rows)
/// into the page cache, in the background. Lookups read rows at random: on
/// a cold cache each one waits for the disk, and those reads queue with the
/// audit log's syncs, which every lookup also waits for (at 10 M people a
/// sync took 311 ms while they ran; see `docs/performance.md`). Read ahead
/// once, the rows are then served from memory for as long as the kernel
/// keeps them. A hint only: nothing fails if it is not taken. Bounded by
/// [`READ_AHEAD`].
fn start_read_ahead(path: &Path, file: &File, len: u64) {
    #[cfg(target_os = "linux")]
    {
        let Ok(file) = file.try_clone() else { return };
        let sidecar = path.to_path_buf();
        let spawned = std::thread::Builder::new().name("gdx-index-readahead".into()).spawn(move || {
            // The kernel reads no more than its read-ahead window per call.
            const CHUNK: u64 = 2 << 20;
            for at in (0..len).step_by(CHUNK as usize) {
                let chunk = std::num::NonZeroU64::new(CHUNK.min(len - at));
                if let Err(e) = rustix::fs::fadvise(&file, at, chunk, rustix::fs::Advice::WillNeed) {
                    tracing::debug!(sidecar = %sidecar.display(), error = %e, "record index read-ahead not taken");
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::debug!(sidecar = %path.display(), error = %e, "record index read-ahead not started");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (path, file, len);
}

/// Writes the sidecar of a data file: every row in Arrow's row format, then
/// the directory by key hash. Streams the file: one batch in memory at a time,
/// plus 20 bytes a row for the directory.
fn build(dataset: &Dataset, data: &Path, sidecar: &Path) -> Result<(), LookupError> {
    let err = index_err(data);
    let file = File::open(data).map_err(|e| err(&e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| err(&e))?
        .with_batch_size(16 * 1024)
        .build()
        .map_err(|e| err(&e))?;
    let layout = Layout::of(dataset).map_err(|e| err(&e))?;
    let rows_converter =
        RowConverter::new(layout.schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())
            .map_err(|e| err(&e))?;
    let out_err = index_err(sidecar);
    if let Some(dir) = sidecar.parent() {
        std::fs::create_dir_all(dir).map_err(|e| out_err(&e))?;
    }
    let tmp = sidecar.with_extension(format!("keys.tmp{}", std::process::id()));
    let header = serde_json::to_vec(&Header { arrow: arrow_release(), columns: layout.columns.clone() })
        .map_err(|e| out_err(&e))?;
    let write = || -> Result<(), LookupError> {
        let out = std::io::BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(|e| out_err(&e))?);
        let mut w = Counted { out, at: 0 };
        w.put(MAGIC).map_err(|e| out_err(&e))?;
        w.put(&(header.len() as u32).to_le_bytes()).map_err(|e| out_err(&e))?;
        w.put(&header).map_err(|e| out_err(&e))?;
        let mut directory: Vec<(u64, u64, u32)> = Vec::new();
        for batch in reader {
            let batch = conform(&batch.map_err(|e| err(&e))?, &layout.schema).map_err(|e| err(&e))?;
            let keys = layout
                .encoder
                .convert_columns(&key_columns(&batch, &layout.keys).map_err(|e| err(&e))?)
                .map_err(|e| err(&e))?;
            let rows = rows_converter.convert_columns(batch.columns()).map_err(|e| err(&e))?;
            for (k, r) in keys.iter().zip(rows.iter()) {
                let bytes = r.as_ref();
                let length = u32::try_from(bytes.len()).map_err(|e| err(&e))?;
                directory.push((hash(k.as_ref()), w.at, length));
                w.put(bytes).map_err(|e| out_err(&e))?;
            }
        }
        directory.sort_unstable();
        let start = w.at;
        for (h, offset, length) in &directory {
            w.put(&h.to_le_bytes()).map_err(|e| out_err(&e))?;
            w.put(&offset.to_le_bytes()).map_err(|e| out_err(&e))?;
            w.put(&length.to_le_bytes()).map_err(|e| out_err(&e))?;
        }
        w.put(&start.to_le_bytes()).map_err(|e| out_err(&e))?;
        w.put(&(directory.len() as u64).to_le_bytes()).map_err(|e| out_err(&e))?;
        w.out.into_inner().map_err(|e| out_err(&e.into_error()))?.sync_all().map_err(|e| out_err(&e))?;
        std::fs::rename(&tmp, sidecar).map_err(|e| out_err(&e))
    };
    let written = write();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn key_columns(batch: &RecordBatch, fields: &[(String, DataType)]) -> Result<Vec<ArrayRef>, arrow::error::ArrowError> {
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

/// Finds each key's row: candidates by hash in every file's directory, read
/// and decoded, kept when their key equals the one asked.
fn find(layout: &Layout, snapshot: &Snapshot, wanted: &[ArrayRef], n: usize) -> Result<Found, LookupError> {
    let arrow_err = |e: &dyn std::fmt::Display| LookupError::Index { path: PathBuf::new(), message: e.to_string() };
    let asked = layout.encoder.convert_columns(wanted).map_err(|e| arrow_err(&e))?;
    let asked_hashes: Vec<u64> = (0..n).map(|k| hash(asked.row(k).as_ref())).collect();
    let mut batches: Vec<RecordBatch> = Vec::new();
    // For each key asked: (batch, row) where it was found.
    let mut hits: Vec<Option<(usize, usize)>> = vec![None; n];
    for file in &snapshot.files {
        // The candidates of this file: (directory entry, key asked).
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        for (k, hit) in hits.iter().enumerate() {
            if hit.is_none() {
                candidates.extend(file.candidates(asked_hashes[k]).map(|i| (i, k)));
            }
        }
        if candidates.is_empty() {
            continue;
        }
        let err = index_err(&file.sidecar);
        let parser = file.rows.parser();
        let bytes = candidates
            .iter()
            .map(|(i, _)| file.row_bytes(*i))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| err(&e))?;
        let columns = file.rows.convert_rows(bytes.iter().map(|b| parser.parse(b))).map_err(|e| err(&e))?;
        let batch = RecordBatch::try_new(file.schema.clone(), columns).map_err(|e| err(&e))?;
        // A file written before the dataset's columns changed is read as the dataset is now.
        let batch =
            if file.schema == layout.schema { batch } else { conform(&batch, &layout.schema).map_err(|e| err(&e))? };
        let found = layout
            .encoder
            .convert_columns(&key_columns(&batch, &layout.keys).map_err(|e| err(&e))?)
            .map_err(|e| err(&e))?;
        for (row, (_, k)) in candidates.iter().enumerate() {
            if hits[*k].is_none() && found.row(row) == asked.row(*k) {
                hits[*k] = Some((batches.len(), row));
            }
        }
        batches.push(batch);
    }
    // One output row per distinct hit (a key asked twice is answered by one row).
    let mut picked: Vec<(usize, usize)> = Vec::new();
    let mut slots: HashMap<(usize, usize), usize> = HashMap::new();
    let mut index = Vec::with_capacity(n);
    for hit in hits {
        index.push(hit.map(|h| {
            *slots.entry(h).or_insert_with(|| {
                picked.push(h);
                picked.len() - 1
            })
        }));
    }
    let rows = if picked.is_empty() {
        RecordBatch::new_empty(layout.schema.clone())
    } else if let [(batch, row)] = picked[..] {
        // One row (a single lookup): a view of it, nothing copied.
        batches[batch].slice(row, 1)
    } else {
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        arrow::compute::interleave_record_batch(&refs, &picked).map_err(|e| arrow_err(&e))?
    };
    Ok(Found { rows, index })
}

fn nullable(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>()))
}

#[cfg(test)]
mod tests {
    use super::{Buckets, Budget};

    #[test]
    fn the_read_ahead_budget_is_taken_within_its_limit_and_given_back() {
        let budget = Budget::with_limit(100);
        assert!(budget.take(60));
        assert!(!budget.take(41), "60 + 41 is over the limit");
        assert!(budget.take(40));
        assert!(!budget.take(1));
        budget.give(60);
        assert!(budget.take(60));
        assert!(!budget.take(u64::MAX), "no overflow");
        if cfg!(target_os = "linux") {
            let total = super::memory_total().expect("MemTotal");
            assert_eq!(Budget::new().limit(), total / 4, "a quarter of memory");
            assert!(total > 1 << 20);
        }
    }

    /// The entries equal to `h` by binary search, the reference.
    fn reference(hashes: &[u64], h: u64) -> std::ops::Range<usize> {
        hashes.partition_point(|k| *k < h)..hashes.partition_point(|k| *k <= h)
    }

    #[test]
    fn buckets_find_what_a_binary_search_finds() {
        for n in [0usize, 1, 3, 4, 5, 17, 1000, 100_000] {
            // Uniform hashes, with runs of equal ones and both extremes.
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
            let mut hashes: Vec<u64> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state
                })
                .collect();
            if n > 10 {
                hashes[0] = 0;
                hashes[1] = u64::MAX;
                hashes[2] = hashes[3];
                hashes[4] = hashes[3];
            }
            hashes.sort_unstable();
            let buckets = Buckets::new(&hashes).expect("fewer than 2^32 hashes");
            let mut probes: Vec<u64> = hashes.iter().step_by(7).copied().collect();
            probes.extend([0, 1, u64::MAX, u64::MAX - 1, 1 << 63]);
            probes.extend(hashes.iter().step_by(11).map(|h| h.wrapping_add(1)));
            for h in probes {
                assert_eq!(buckets.equal(&hashes, h), reference(&hashes, h), "n={n} h={h:#x}");
            }
        }
    }
}
