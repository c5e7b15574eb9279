//! Writing a push's data files, and committing them as one Delta version.
//!
//! A producer on a blocking thread reads batches (the staged upload, or the
//! rows an upsert keeps) and deals them out to [`WRITERS`] Parquet writers,
//! each on its own blocking thread, so encoding and compression use every
//! core. The writers return add actions with statistics; the caller commits
//! them, with whatever files they replace, in one transaction.

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, MetadataExt, StructType};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::Value;

use super::{LakeError, TARGET_FILE_BYTES, WriteMode, delta, writer_properties};
use crate::model::Dataset;

/// Parquet writers working at once.
pub(super) const WRITERS: usize = 2;

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
pub(super) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> ReadResult<RecordBatch> {
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
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

/// The table's schema after a push: its columns, then the columns the
/// catalogue added since (nullable). `None` for the table means a new table.
/// The flag says whether the table's schema grew.
pub(super) fn push_schema(table: Option<&SchemaRef>, dataset: &Dataset) -> (SchemaRef, bool) {
    let upload = dataset.arrow_schema();
    let Some(table) = table else { return (Arc::new(upload), false) };
    let mut fields: Vec<FieldRef> = table.fields().iter().cloned().collect();
    let mut widened = false;
    for f in upload.fields() {
        if table.field_with_name(f.name()).is_err() {
            fields.push(Arc::new(Field::new(f.name(), f.data_type().clone(), true)));
            widened = true;
        }
    }
    (Arc::new(Schema::new(fields)), widened)
}

/// The Delta form of an Arrow schema.
pub(super) fn kernel_schema(schema: &SchemaRef, id: &str) -> Result<StructType, LakeError> {
    schema.as_ref().try_into_kernel().map_err(|e| delta(id)(DeltaTableError::Generic(e.to_string())))
}

/// A writer's configuration for `schema`, with the table's statistics settings.
pub(super) fn writer_config(dataset: &Dataset, schema: SchemaRef, table: Option<&DeltaTable>) -> WriterConfig {
    let properties = table.and_then(|t| t.snapshot().ok()).map(|s| s.table_config());
    let (num_indexed_cols, stats_columns) =
        deltalake::operations::get_num_idx_cols_and_stats_columns(properties, HashMap::new());
    WriterConfig::new(
        schema,
        Vec::new(),
        Some(writer_properties(dataset)),
        NonZeroU64::new(TARGET_FILE_BYTES),
        None,
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

/// Runs `produce` on a blocking thread, writing what it deals out with
/// [`WRITERS`] Parquet writers; returns the add actions of the new files.
/// On failure no file is left behind.
pub(super) async fn write_files<F>(
    id: &str,
    table_dir: &Path,
    store: deltalake::logstore::ObjectStoreRef,
    config: WriterConfig,
    produce: F,
) -> Result<Vec<Add>, LakeError>
where
    F: FnOnce(&mut Dealer) -> ReadResult<()> + Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let mut senders = Vec::with_capacity(WRITERS);
    let mut writers = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
        senders.push(tx);
        let (store, config, handle) = (store.clone(), config.clone(), handle.clone());
        writers.push(tokio::task::spawn_blocking(move || {
            let mut writer = DeltaWriter::new(store, config);
            while let Some(batch) = rx.blocking_recv() {
                if let Err(e) = handle.block_on(writer.write(&batch)) {
                    let _ = handle.block_on(writer.abort());
                    return Err(e);
                }
            }
            handle.block_on(writer.close())
        }));
    }
    let producer = tokio::task::spawn_blocking(move || produce(&mut Dealer { senders, next: 0 }));
    let joined =
        |e: tokio::task::JoinError| LakeError::Io { path: table_dir.to_path_buf(), source: std::io::Error::other(e) };
    let produced = producer.await.map_err(joined).and_then(|r| r.map_err(|e| e.into_lake(id)));
    let mut adds = Vec::new();
    let mut failed = produced.err();
    for w in writers {
        match w.await.map_err(joined).and_then(|r| r.map_err(delta(id))) {
            Ok(a) => adds.extend(a),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        remove_files(table_dir, &adds);
        return Err(e);
    }
    Ok(adds)
}

/// Deletes data files no version refers to (a push that failed before or at its commit).
pub(super) fn remove_files(table_dir: &Path, adds: &[Add]) {
    for a in adds {
        let _ = std::fs::remove_file(table_dir.join(&a.path));
    }
}

/// Appends or replaces: the staged upload becomes new files, committed with
/// the table's new schema (a new table is created by this commit).
pub(super) async fn write(
    table_dir: &Path,
    dataset: &Dataset,
    table: DeltaTable,
    staged: &Path,
    mode: WriteMode,
    app_metadata: HashMap<String, Value>,
) -> Result<(), LakeError> {
    let id = dataset.id.as_str();
    let exists = table.version().is_some();
    let state = if exists { Some(table.snapshot().map_err(delta(id))?) } else { None };
    let table_schema = state.map(|s| s.snapshot().arrow_schema());
    let (schema, widened) = push_schema(table_schema.as_ref(), dataset);
    let config = writer_config(dataset, schema.clone(), exists.then_some(&table));
    let adds = {
        let (staged, schema) = (staged.to_path_buf(), schema.clone());
        let columns: Vec<String> = dataset.columns.iter().map(|c| c.name.clone()).collect();
        write_files(id, table_dir, table.log_store().object_store(None), config, move |dealer| {
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            for batch in read_staged(&staged, &columns)? {
                if !dealer.send(conform(&batch?, &schema)?) {
                    break;
                }
            }
            Ok(())
        })
        .await?
    };
    let added = adds.clone();
    let committed = match state {
        None => table
            .create()
            .with_table_name(&dataset.name)
            .with_columns(kernel_schema(&schema, id)?.fields().cloned())
            // Compaction reads the target size from the table.
            .with_configuration([("delta.targetFileSize", Some(TARGET_FILE_BYTES.to_string()))])
            .with_actions(adds.into_iter().map(Action::Add))
            .with_commit_properties(CommitProperties::default().with_metadata(app_metadata).with_max_retries(0))
            .await
            .map(|_| ()),
        Some(state) => {
            let mut actions = Vec::with_capacity(adds.len() + 1);
            if widened {
                let kernel = kernel_schema(&schema, id)?;
                actions.push(Action::Metadata(
                    state.metadata().clone().with_schema(&kernel).map_err(|e| delta(id)(e.into()))?,
                ));
            }
            if mode == WriteMode::Replace {
                actions.extend(state.log_data().iter().map(|f| Action::Remove(f.remove_action(true))));
            }
            actions.extend(adds.into_iter().map(Action::Add));
            let save = if mode == WriteMode::Replace { SaveMode::Overwrite } else { SaveMode::Append };
            CommitBuilder::default()
                .with_actions(actions)
                .with_app_metadata(app_metadata)
                .with_max_retries(0)
                .build(
                    Some(state),
                    table.log_store(),
                    DeltaOperation::Write { mode: save, partition_by: None, predicate: None },
                )
                .await
                .map(|_| ())
        }
    };
    committed.map_err(|e| {
        remove_files(table_dir, &added);
        delta(id)(e)
    })
}
