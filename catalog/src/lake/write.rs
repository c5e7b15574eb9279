//! Writing a push's data files, and committing them as one Delta version.
//!
//! A push's rows reach [`WRITERS`] Parquet writers, each on its own blocking
//! thread, while the upload is still being checked ([`PushWriter`]), so
//! decoding, checking, encoding and compression overlap on every core. The
//! files belong to no version until [`commit_files`] commits their add
//! actions, with whatever files they replace, in one transaction; a push
//! that fails removes them (files of a push killed midway are removed by
//! the next vacuum).

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::state::DeltaTableState;
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::Value;

use super::{LakeError, TARGET_FILE_BYTES, WriteMode, delta, writer_properties};
use crate::model::Dataset;

/// Parquet writers working at once.
pub(super) const WRITERS: usize = 2;

/// Rows a writer encodes between two checks of its file's size. Delta's
/// default (1,024) cuts every batch into small slices, each paying the
/// encoders' per-call cost; a file then passes its target size by at most
/// one slice.
const WRITE_SLICE_ROWS: usize = 16 * 1024;

/// Failures of the blocking phases (reading staged and stored data), mapped
/// to [`LakeError`] where they surface.
#[derive(Debug)]
pub(super) enum ReadError {
    Io(PathBuf, std::io::Error),
    Arrow(ArrowError),
    Parquet(PathBuf, deltalake::parquet::errors::ParquetError),
}

impl From<ArrowError> for ReadError {
    fn from(e: ArrowError) -> Self {
        ReadError::Arrow(e)
    }
}

impl ReadError {
    pub(super) fn into_lake(self, dataset: &str) -> LakeError {
        match self {
            ReadError::Io(path, source) => LakeError::Io { path, source },
            ReadError::Arrow(e) => LakeError::Engine { dataset: dataset.to_string(), source: Box::new(e.into()) },
            ReadError::Parquet(path, e) => LakeError::Io { path, source: std::io::Error::other(e) },
        }
    }
}

pub(super) type ReadResult<T> = std::result::Result<T, ReadError>;

/// The staged upload's batches, with only the named columns.
pub(super) fn read_staged(path: &Path, columns: &[&str]) -> ReadResult<impl Iterator<Item = ReadResult<RecordBatch>>> {
    let open = || {
        File::open(path)
            .map(|f| std::io::BufReader::with_capacity(1 << 20, f))
            .map_err(|e| ReadError::Io(path.to_path_buf(), e))
    };
    let schema = arrow::ipc::reader::FileReader::try_new(open()?, None)?.schema();
    let projection: Vec<usize> = columns.iter().map(|c| schema.index_of(c)).collect::<Result<_, _>>()?;
    let reader = arrow::ipc::reader::FileReader::try_new(open()?, Some(projection))?;
    Ok(reader.map(|b| b.map_err(ReadError::from)))
}

/// `batch`'s columns shaped as `schema`: by name, cast where the types
/// differ, nulls for columns the batch does not have.
pub(super) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(arrow::array::new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

/// The metadata action that widens the table's schema with the columns the
/// catalogue added since the last push (nullable, after the table's own);
/// `None` when the table already has them all.
pub(super) fn widen(state: &DeltaTableState, dataset: &Dataset) -> Result<Option<Action>, LakeError> {
    let id = dataset.id.as_str();
    let table = state.snapshot().arrow_schema();
    let added: Vec<FieldRef> = dataset
        .arrow_schema()
        .fields()
        .iter()
        .filter(|f| table.field_with_name(f.name()).is_err())
        .map(|f| Arc::new(Field::new(f.name(), f.data_type().clone(), true)))
        .collect();
    if added.is_empty() {
        return Ok(None);
    }
    let fields: Vec<FieldRef> = table.fields().iter().cloned().chain(added).collect();
    let kernel = kernel_schema(&Arc::new(Schema::new(fields)), id)?;
    let metadata = state.metadata().clone().with_schema(&kernel).map_err(|e| delta(id)(e.into()))?;
    Ok(Some(Action::Metadata(metadata)))
}

/// Commits `actions` on top of `state` as one transaction. Nothing is
/// retried: another writer's commit in between is a conflict.
pub(super) async fn commit_actions(
    table: &DeltaTable,
    state: &DeltaTableState,
    actions: Vec<Action>,
    operation: DeltaOperation,
    app_metadata: HashMap<String, Value>,
    id: &str,
) -> Result<(), LakeError> {
    CommitBuilder::default()
        .with_actions(actions)
        .with_app_metadata(app_metadata)
        .with_max_retries(0)
        .build(Some(state), table.log_store(), operation)
        .await
        .map(|_| ())
        .map_err(delta(id))
}

/// The Delta form of an Arrow schema.
pub(super) fn kernel_schema(schema: &SchemaRef, id: &str) -> Result<StructType, LakeError> {
    schema.as_ref().try_into_kernel().map_err(|e| delta(id)(DeltaTableError::Generic(e.to_string())))
}

/// A writer's configuration for `schema` (statistics on the first 32 columns, Delta's default).
fn writer_config(dataset: &Dataset, schema: SchemaRef) -> WriterConfig {
    let (num_indexed_cols, stats_columns) =
        deltalake::operations::get_num_idx_cols_and_stats_columns(None, HashMap::new());
    WriterConfig::new(
        schema,
        Vec::new(),
        Some(writer_properties(dataset)),
        NonZeroU64::new(TARGET_FILE_BYTES),
        Some(WRITE_SLICE_ROWS),
        num_indexed_cols,
        stats_columns,
    )
}

/// Deals batches out to the writers; `false` once they have stopped.
pub(super) struct Dealer {
    senders: Vec<tokio::sync::mpsc::Sender<RecordBatch>>,
    next: usize,
}

impl Dealer {
    pub(super) fn send(&mut self, batch: RecordBatch) -> bool {
        let i = self.next % self.senders.len();
        self.next += 1;
        self.senders[i].blocking_send(batch).is_ok()
    }
}

/// Parquet writers taking a push's rows while they are produced.
///
/// Dropped without [`PushWriter::finish`] (a refused push, a client gone
/// midway), the writers remove what they wrote.
pub struct PushWriter {
    id: String,
    table_dir: PathBuf,
    schema: SchemaRef,
    dealer: Dealer,
    finishing: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<deltalake::DeltaResult<Vec<Add>>>>,
}

impl std::fmt::Debug for PushWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushWriter").field("dataset", &self.id).finish_non_exhaustive()
    }
}

impl PushWriter {
    /// Writers of new files of `dataset` (with the dataset's columns) under `table_dir`.
    /// Must be called within the Tokio runtime.
    pub(super) fn start(dataset: &Dataset, table_dir: PathBuf, store: deltalake::logstore::ObjectStoreRef) -> Self {
        let schema: SchemaRef = Arc::new(dataset.arrow_schema());
        let config = writer_config(dataset, schema.clone());
        let handle = tokio::runtime::Handle::current();
        let finishing = Arc::new(AtomicBool::new(false));
        let mut senders = Vec::with_capacity(WRITERS);
        let mut writers = Vec::with_capacity(WRITERS);
        for _ in 0..WRITERS {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
            senders.push(tx);
            let (store, config, handle) = (store.clone(), config.clone(), handle.clone());
            let (finishing, dir) = (finishing.clone(), table_dir.clone());
            writers.push(tokio::task::spawn_blocking(move || {
                let mut writer = DeltaWriter::new(store, config);
                while let Some(batch) = rx.blocking_recv() {
                    if let Err(e) = handle.block_on(writer.write(&batch)) {
                        // Files already completed stay for the next vacuum.
                        let _ = handle.block_on(writer.abort());
                        return Err(e);
                    }
                }
                let adds = handle.block_on(writer.close())?;
                if finishing.load(Ordering::Acquire) {
                    Ok(adds)
                } else {
                    remove_files(&dir, &adds);
                    Ok(Vec::new())
                }
            }));
        }
        Self { id: dataset.id.clone(), table_dir, schema, dealer: Dealer { senders, next: 0 }, finishing, writers }
    }

    /// Writes a batch holding (at least) the dataset's columns; blocks while
    /// the writers are busy. Call from a blocking thread, never the runtime.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), LakeError> {
        let batch = conform(batch, &self.schema).map_err(|e| ReadError::from(e).into_lake(&self.id))?;
        if self.dealer.send(batch) {
            Ok(())
        } else {
            // A writer stopped: `finish` reports why.
            Err(LakeError::Io {
                path: self.table_dir.clone(),
                source: std::io::Error::other("a data file writer stopped"),
            })
        }
    }

    /// Closes the files; their add actions, for [`Lake::commit`](super::Lake::commit).
    pub async fn finish(self) -> Result<PushFiles, LakeError> {
        self.finishing.store(true, Ordering::Release);
        let Self { id, table_dir, dealer, writers, .. } = self;
        drop(dealer);
        let mut adds = Vec::new();
        let mut failed = None;
        for w in writers {
            let joined =
                w.await.map_err(|e| LakeError::Io { path: table_dir.clone(), source: std::io::Error::other(e) });
            match joined.and_then(|r| r.map_err(delta(&id))) {
                Ok(a) => adds.extend(a),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            remove_files(&table_dir, &adds);
            return Err(e);
        }
        Ok(PushFiles { table_dir, adds })
    }

    /// Stops the writers and waits until they have removed what they wrote.
    pub async fn abort(self) {
        let Self { dealer, writers, .. } = self;
        drop(dealer);
        for w in writers {
            let _ = w.await;
        }
    }
}

/// A push's data files, written and not yet committed.
#[derive(Debug)]
#[must_use = "commit the files or discard them"]
pub struct PushFiles {
    table_dir: PathBuf,
    pub(super) adds: Vec<Add>,
}

impl PushFiles {
    /// Removes the files (a push that will not commit them).
    pub fn discard(self) {
        remove_files(&self.table_dir, &self.adds);
    }

    /// Rows in the files.
    pub fn rows(&self) -> u64 {
        self.adds.iter().filter_map(|a| a.get_stats().ok().flatten()).map(|s| s.num_records.max(0) as u64).sum()
    }
}

/// Writes what `produce` deals out (on a blocking thread) into new files.
pub(super) async fn write_files<F>(
    dataset: &Dataset,
    table_dir: &Path,
    store: deltalake::logstore::ObjectStoreRef,
    produce: F,
) -> Result<PushFiles, LakeError>
where
    F: FnOnce(&mut PushWriter) -> Result<(), LakeError> + Send + 'static,
{
    let mut writer = PushWriter::start(dataset, table_dir.to_path_buf(), store);
    let produced = tokio::task::spawn_blocking(move || {
        let result = produce(&mut writer);
        (writer, result)
    })
    .await;
    let (writer, result) =
        produced.map_err(|e| LakeError::Io { path: table_dir.to_path_buf(), source: std::io::Error::other(e) })?;
    match result {
        Ok(()) => writer.finish().await,
        Err(e) => {
            // The writer's own failure, when it has one, is the cause.
            match writer.finish().await {
                Ok(files) => {
                    files.discard();
                    Err(e)
                }
                Err(cause) => Err(cause),
            }
        }
    }
}

/// Deletes data files no version refers to (a push that failed before or at its commit).
pub(super) fn remove_files(table_dir: &Path, adds: &[Add]) {
    for a in adds {
        let _ = std::fs::remove_file(table_dir.join(&a.path));
    }
}

/// The staged upload's rows (skip mode) as new files.
pub(super) async fn write_staged(
    dataset: &Dataset,
    table_dir: &Path,
    store: deltalake::logstore::ObjectStoreRef,
    staged: &Path,
) -> Result<PushFiles, LakeError> {
    let staged = staged.to_path_buf();
    let columns: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
    let id = dataset.id.clone();
    write_files(dataset, table_dir, store, move |writer| {
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        for batch in read_staged(&staged, &columns).map_err(|e| e.into_lake(&id))? {
            writer.write(&batch.map_err(|e| e.into_lake(&id))?)?;
        }
        Ok(())
    })
    .await
}

/// Commits a push's files as an append or a replace (creating the table on
/// its first push). On failure the files are removed.
pub(super) async fn commit_files(
    dataset: &Dataset,
    table: DeltaTable,
    files: PushFiles,
    mode: WriteMode,
    app_metadata: HashMap<String, Value>,
) -> Result<(), LakeError> {
    let id = dataset.id.as_str();
    let adds = files.adds.iter().cloned().map(Action::Add);
    let committed = async {
        if table.version().is_none() {
            let kernel = kernel_schema(&Arc::new(dataset.arrow_schema()), id)?;
            return table
                .create()
                .with_table_name(&dataset.name)
                .with_columns(kernel.fields().cloned())
                // Compaction reads the target size from the table.
                .with_configuration([
                    ("delta.targetFileSize", Some(TARGET_FILE_BYTES.to_string())),
                    // Upserts write the rows they change (see `cdc`), for rules and other readers.
                    ("delta.enableChangeDataFeed", Some("true".to_string())),
                ])
                .with_actions(adds)
                .with_commit_properties(CommitProperties::default().with_metadata(app_metadata).with_max_retries(0))
                .await
                .map(|_| ())
                .map_err(delta(id));
        }
        let state = table.snapshot().map_err(delta(id))?;
        let mut actions: Vec<Action> = widen(state, dataset)?.into_iter().collect();
        if mode == WriteMode::Replace {
            actions.extend(state.log_data().iter().map(|f| Action::Remove(f.remove_action(true))));
        }
        actions.extend(adds);
        let save = if mode == WriteMode::Replace { SaveMode::Overwrite } else { SaveMode::Append };
        let operation = DeltaOperation::Write { mode: save, partition_by: None, predicate: None };
        commit_actions(&table, state, actions, operation, app_metadata, id).await
    }
    .await;
    if committed.is_err() {
        files.discard();
    }
    committed
}
