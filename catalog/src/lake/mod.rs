//! The lake: one Delta table per dataset under `<data-dir>/lake/<department>/<name>`.
//!
//! Each push is one atomic Delta commit (append, replace, or upsert on the
//! primary key, see [`upsert`]). GDX numbers versions 1, 2, … one per push; the
//! Delta table has its own numbering (compaction and schema changes commit
//! too), so every push commit carries its GDX version, mode, author and
//! idempotency key in the commit's metadata, and the catalogue records the
//! pair. The Delta log is the source of truth: [`Lake::commits_after`] reads
//! back what a crash kept out of the catalogue.
//!
//! Parquet files are written with zstd, page statistics and bloom filters
//! on the primary-key columns; any Delta reader can open the tables.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use datafusion::execution::context::SessionContext;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::model::Dataset;

mod cdc;
pub mod records;
mod upsert;
mod write;

pub use write::{PushFiles, PushWriter};

/// Errors of the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Delta Lake failed.
    #[error("delta table {dataset}: {source}")]
    Delta {
        /// The dataset.
        dataset: String,
        /// The underlying error.
        source: Box<DeltaTableError>,
    },
    /// Another writer committed first (another process on the same lake).
    #[error("dataset {dataset} was changed by another writer; retry the push")]
    Conflict {
        /// The dataset.
        dataset: String,
    },
    /// The commit needed more memory than its pool allows.
    #[error("dataset {dataset}: the push needs more memory than the server gives one commit")]
    ResourcesExhausted {
        /// The dataset.
        dataset: String,
    },
    /// Query engine failure while reading staged or stored data.
    #[error("dataset {dataset}: {source}")]
    Engine {
        /// The dataset.
        dataset: String,
        /// The underlying error.
        source: Box<datafusion::error::DataFusionError>,
    },
    /// The table's folder could not be used.
    #[error("{}: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// How a push changes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Add the rows.
    Append,
    /// Replace every row.
    Replace,
    /// Merge on the primary key: matching rows updated, new rows inserted.
    Upsert,
}

impl WriteMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Append => "append",
            WriteMode::Replace => "replace",
            WriteMode::Upsert => "upsert",
        }
    }
}

impl std::str::FromStr for WriteMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "append" => Ok(WriteMode::Append),
            "replace" => Ok(WriteMode::Replace),
            "upsert" => Ok(WriteMode::Upsert),
            _ => Err("must be one of append|replace|upsert".into()),
        }
    }
}

/// What a push commit records in the Delta log, and the catalogue from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushInfo {
    /// GDX version (1, 2, …).
    pub version: i64,
    /// Write mode.
    pub mode: WriteMode,
    /// Rows the push wrote.
    pub rows_written: i64,
    /// Rows the push set aside (skip mode).
    pub rejected: i64,
    /// Principal that pushed.
    pub committed_by: String,
    /// The client's idempotency key, if it sent one.
    pub idempotency_key: Option<String>,
}

/// A committed push as the catalogue records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// What the push was.
    pub info: PushInfo,
    /// The Delta version of the commit.
    pub delta_version: u64,
    /// Rows in the table after the commit.
    pub row_count: i64,
    /// Bytes of the files the commit added.
    pub bytes: i64,
    /// Commit time.
    pub committed_at: chrono::DateTime<chrono::Utc>,
}

const INFO_KEY: &str = "gdx.push";
/// Size at which a data file is closed: the writer holds a file's bytes until
/// it is stored, so this bounds a push's memory as much as the row groups do.
const TARGET_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Rows per Parquet data page at most (Parquet's default; pages also close at 1 MiB).
const DATA_PAGE_ROWS: usize = 20_000;
/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// The lake under one folder.
#[derive(Debug)]
pub struct Lake {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The last state read of each table, by folder: opening the latest
    /// version then reads only the commits made since, not the whole log.
    latest: Mutex<HashMap<PathBuf, DeltaTable>>,
}

fn delta(dataset: &str) -> impl FnOnce(DeltaTableError) -> LakeError + '_ {
    move |e| match e {
        DeltaTableError::VersionAlreadyExists(_) => LakeError::Conflict { dataset: dataset.to_string() },
        DeltaTableError::Transaction {
            source:
                deltalake::kernel::transaction::TransactionError::CommitConflict(_)
                | deltalake::kernel::transaction::TransactionError::VersionAlreadyExists(_)
                | deltalake::kernel::transaction::TransactionError::MaxCommitAttempts(_),
        } => LakeError::Conflict { dataset: dataset.to_string() },
        // DataFusion's memory errors reach us wrapped as text.
        other
            if other.to_string().contains("Resources exhausted") || other.to_string().contains("Not enough memory") =>
        {
            LakeError::ResourcesExhausted { dataset: dataset.to_string() }
        }
        other => LakeError::Delta { dataset: dataset.to_string(), source: Box::new(other) },
    }
}

fn engine(dataset: &str) -> impl FnOnce(datafusion::error::DataFusionError) -> LakeError + '_ {
    move |e| LakeError::Engine { dataset: dataset.to_string(), source: Box::new(e) }
}

/// Writer settings of every data file: zstd, page statistics, bloom filters on the key.
pub fn writer_properties(dataset: &Dataset) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        // Row groups are buffered whole while written: this bounds a writer's memory.
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_max_row_group_bytes(Some(64 * 1024 * 1024))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Record lookups read the index's sidecars, never a data page, so
        // pages are sized for scans and compression.
        .set_data_page_row_count_limit(DATA_PAGE_ROWS);
    for k in &dataset.primary_key {
        b = b.set_column_bloom_filter_enabled(ColumnPath::from(k.as_str()), true);
    }
    // Columns whose values rarely repeat (a single-column key, ID and credit
    // codes, mobiles, addresses) gain nothing from a dictionary: the writer
    // would build one per row group only to fall back to plain encoding.
    // Names repeat (a population's names fit a dictionary five times smaller
    // than the plain values) and keep theirs.
    for c in &dataset.columns {
        let unique_key = dataset.primary_key.len() == 1 && dataset.primary_key[0] == c.name;
        let distinct = matches!(c.semantic.as_deref(), Some("id_card" | "credit_code" | "phone" | "address"));
        if unique_key || distinct {
            b = b.set_column_dictionary_enabled(ColumnPath::from(c.name.as_str()), false);
        }
    }
    b.build()
}

impl Lake {
    /// The lake under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), locks: Mutex::new(HashMap::new()), latest: Mutex::new(HashMap::new()) }
    }

    /// The folder of a dataset's table.
    pub fn table_path(&self, dataset: &Dataset) -> PathBuf {
        self.root.join(&dataset.department).join(&dataset.name)
    }

    fn url(&self, dataset: &Dataset) -> Result<url::Url, LakeError> {
        let path = self.table_path(dataset);
        std::fs::create_dir_all(&path).map_err(|source| LakeError::Io { path: path.clone(), source })?;
        let abs = path.canonicalize().map_err(|source| LakeError::Io { path: path.clone(), source })?;
        url::Url::from_directory_path(&abs)
            .map_err(|_| LakeError::Io { path: abs, source: std::io::Error::other("not an absolute path") })
    }

    /// The lock that serialises writers of one dataset in this process.
    pub fn write_lock(&self, dataset: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(dataset.to_string()).or_default().clone()
    }

    /// The dataset's table at its latest version, or `None` before the first push.
    pub async fn open(&self, dataset: &Dataset) -> Result<Option<DeltaTable>, LakeError> {
        let path = self.table_path(dataset);
        if !path.join("_delta_log").is_dir() {
            return Ok(None);
        }
        let known = self.latest.lock().unwrap_or_else(|p| p.into_inner()).get(&path).cloned();
        // Brought up to date with the commits since (a listing of the log when
        // there are none); read whole when unknown or when that fails.
        let updated = match known {
            Some(mut table) => table.update_incremental(None).await.ok().map(|()| table),
            None => None,
        };
        let table = match updated {
            Some(table) => table,
            None => DeltaTable::try_from_url(self.url(dataset)?).await.map_err(delta(&dataset.id))?,
        };
        if table.version().is_none() {
            return Ok(None);
        }
        self.latest.lock().unwrap_or_else(|p| p.into_inner()).insert(path, table.clone());
        Ok(Some(table))
    }

    /// Delta's change data feed of the commits `from..=to` (Delta versions)
    /// as a table: the table's columns, `_change_type` (`insert`,
    /// `update_preimage`, `update_postimage`, `delete`), `_commit_version`
    /// and `_commit_timestamp`. `None` when the table keeps no feed.
    pub async fn change_feed(
        &self,
        dataset: &Dataset,
        from: u64,
        to: u64,
    ) -> Result<Option<Arc<dyn datafusion::catalog::TableProvider>>, LakeError> {
        let Some(table) = self.open(dataset).await? else { return Ok(None) };
        let enabled = table.snapshot().map_err(delta(&dataset.id))?.table_config().enable_change_data_feed;
        if enabled != Some(true) {
            return Ok(None);
        }
        let builder = table.scan_cdf().with_starting_version(from).with_ending_version(to);
        let feed = deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(builder).map_err(delta(&dataset.id))?;
        Ok(Some(Arc::new(feed)))
    }

    /// The table at a Delta version.
    pub async fn open_version(&self, dataset: &Dataset, delta_version: u64) -> Result<DeltaTable, LakeError> {
        let url = self.url(dataset)?;
        deltalake::open_table_with_version(url, delta_version).await.map_err(delta(&dataset.id))
    }

    /// Parquet writers for a push's rows: feed them while the upload is
    /// checked, then [`PushWriter::finish`] and [`Lake::commit`]. Must be
    /// called within the Tokio runtime.
    pub fn writer(&self, dataset: &Dataset) -> Result<PushWriter, LakeError> {
        Ok(PushWriter::start(dataset, self.table_path(dataset), self.store(dataset)?))
    }

    /// Writes a staged Arrow IPC file's rows (the dataset's columns) as a push's files.
    pub async fn write_staged(&self, dataset: &Dataset, staged: &Path) -> Result<PushFiles, LakeError> {
        write::write_staged(dataset, &self.table_path(dataset), self.store(dataset)?, staged).await
    }

    fn store(&self, dataset: &Dataset) -> Result<deltalake::logstore::ObjectStoreRef, LakeError> {
        let table = deltalake::DeltaTableBuilder::from_url(self.url(dataset)?)
            .and_then(|b| b.build())
            .map_err(delta(&dataset.id))?;
        Ok(table.log_store().object_store(None))
    }

    /// Commits a push's files as one version. Callers hold [`Lake::write_lock`].
    /// On failure the files are removed.
    #[tracing::instrument(skip_all, fields(dataset = %dataset.id, version = info.version, mode = info.mode.as_str()))]
    pub async fn commit(&self, dataset: &Dataset, files: PushFiles, info: PushInfo) -> Result<Committed, LakeError> {
        let id = dataset.id.as_str();
        let prepared = async {
            let current = self.open(dataset).await?;
            let before = match &current {
                Some(t) => file_set(t, id)?,
                None => HashSet::new(),
            };
            let metadata = serde_json::to_value(&info)
                .map_err(|e| LakeError::Io { path: self.table_path(dataset), source: e.into() })?;
            Ok::<_, LakeError>((current, before, metadata))
        };
        let (current, before, metadata) = match prepared.await {
            Ok(p) => p,
            Err(e) => {
                files.discard();
                return Err(e);
            }
        };
        let app = HashMap::from([(INFO_KEY.to_string(), metadata)]);
        let table_dir = self.table_path(dataset);
        match (current, info.mode) {
            (Some(table), WriteMode::Upsert) => {
                upsert::upsert(&table_dir, dataset, &table, files, app).await?;
            }
            (current, mode) => {
                let table = match current {
                    Some(t) => t,
                    // A new table: created by this first push's commit.
                    None => match deltalake::DeltaTableBuilder::from_url(self.url(dataset)?).and_then(|b| b.build()) {
                        Ok(t) => t,
                        Err(e) => {
                            files.discard();
                            return Err(delta(id)(e));
                        }
                    },
                };
                write::commit_files(dataset, table, files, mode, app).await?;
            }
        }
        let table = self.open(dataset).await?.ok_or_else(|| LakeError::Conflict { dataset: id.to_string() })?;
        let delta_version = table.version().unwrap_or_default();
        let (row_count, bytes) = stats(&table, &before, id)?;
        Ok(Committed { info, delta_version, row_count, bytes, committed_at: chrono::Utc::now() })
    }

    /// The push commits after Delta version `after` (all of them for `None`), oldest first.
    pub async fn commits_after(&self, dataset: &Dataset, after: Option<u64>) -> Result<Vec<Committed>, LakeError> {
        let id = dataset.id.as_str();
        let Some(table) = self.open(dataset).await? else { return Ok(Vec::new()) };
        let latest = table.version().unwrap_or_default();
        let first = after.map(|a| a + 1).unwrap_or(0);
        if first > latest {
            return Ok(Vec::new());
        }
        let infos: Vec<_> =
            table.history(Some((latest - first + 1) as usize)).try_collect().await.map_err(delta(id))?;
        let mut out = Vec::new();
        // History is newest first and contiguous from the latest version.
        for (i, commit) in infos.iter().enumerate() {
            let v = latest - i as u64;
            let Some(raw) = commit.info.get(INFO_KEY) else { continue };
            let Ok(info) = serde_json::from_value::<PushInfo>(raw.clone()) else { continue };
            let at = self.open_version(dataset, v).await?;
            let before = if v > 0 { file_set(&self.open_version(dataset, v - 1).await?, id)? } else { HashSet::new() };
            let (row_count, bytes) = stats(&at, &before, id)?;
            let committed_at =
                commit.timestamp.and_then(chrono::DateTime::from_timestamp_millis).unwrap_or_else(chrono::Utc::now);
            out.push(Committed { info, delta_version: v, row_count, bytes, committed_at });
        }
        out.reverse();
        Ok(out)
    }

    /// Reads every row of the table at a Delta version (for checks and tests; queries stream instead).
    pub async fn read(
        &self,
        dataset: &Dataset,
        delta_version: u64,
    ) -> Result<Vec<arrow::array::RecordBatch>, LakeError> {
        let id = dataset.id.as_str();
        let table = self.open_version(dataset, delta_version).await?;
        let ctx = SessionContext::new();
        let provider = table.table_provider().await.map_err(engine(id))?;
        let df = ctx.read_table(provider).map_err(engine(id))?;
        df.collect().await.map_err(engine(id))
    }
}

/// What one maintenance run did to a table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Maintenance {
    /// Small files rewritten into larger ones.
    pub files_compacted: u64,
    /// Files the compaction wrote.
    pub files_written: u64,
    /// Files no retained version needs any more, deleted.
    pub files_deleted: u64,
}

impl Lake {
    /// Compacts small files (`optimize`) and deletes files that no version
    /// within `retention` needs, nor any version at all (`vacuum`, including
    /// files left by interrupted pushes). Callers hold [`Lake::write_lock`].
    /// Versions older than the retention can no longer be read afterwards.
    #[tracing::instrument(skip_all, fields(dataset = %dataset.id))]
    pub async fn maintain(
        &self,
        dataset: &Dataset,
        optimize: bool,
        vacuum: Option<std::time::Duration>,
    ) -> Result<Maintenance, LakeError> {
        let id = dataset.id.as_str();
        let mut out = Maintenance::default();
        let Some(mut table) = self.open(dataset).await? else { return Ok(out) };
        if optimize {
            let (t, metrics) = table
                .optimize()
                .with_writer_properties(writer_properties(dataset))
                .with_max_concurrent_tasks(1)
                .await
                .map_err(delta(id))?;
            out.files_compacted = metrics.num_files_removed;
            out.files_written = metrics.num_files_added;
            table = t;
        }
        if let Some(retention) = vacuum {
            // chrono's durations are bounded (hours() panics past them); a century is plenty.
            let hours = i64::try_from(retention.as_secs() / 3600).unwrap_or(i64::MAX).min(100 * 366 * 24);
            let (_, metrics) = table
                .vacuum()
                .with_retention_period(chrono::Duration::hours(hours))
                .with_enforce_retention_duration(false)
                .with_mode(deltalake::operations::vacuum::VacuumMode::Full)
                .await
                .map_err(delta(id))?;
            out.files_deleted = metrics.files_deleted.len() as u64;
        }
        Ok(out)
    }
}

/// The data files of a table version.
fn file_set(table: &DeltaTable, id: &str) -> Result<HashSet<String>, LakeError> {
    Ok(table.snapshot().map_err(delta(id))?.log_data().iter().map(|f| f.path().to_string()).collect())
}

/// Rows of the table, and bytes of the files not in `before`.
fn stats(table: &DeltaTable, before: &HashSet<String>, id: &str) -> Result<(i64, i64), LakeError> {
    let snapshot = table.snapshot().map_err(delta(id))?;
    let (mut rows, mut bytes) = (0i64, 0i64);
    for f in snapshot.log_data().iter() {
        rows += f.num_records().unwrap_or(0) as i64;
        if !before.contains(f.path().as_ref()) {
            bytes += f.size();
        }
    }
    Ok((rows, bytes))
}
