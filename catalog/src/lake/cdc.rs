//! Change data files (Delta's change data feed) for upserts.
//!
//! Tables are created with `delta.enableChangeDataFeed`. An append or a
//! replace needs no change files: readers take the version's added files as
//! inserts and its removed ones as deletes. An upsert rewrites files to drop
//! the rows it replaces, so those files' other rows did not change: it writes
//! the replaced rows as `update_preimage` and the uploaded rows as
//! `update_postimage` (their key existed) or `insert` into `_change_data/`,
//! and readers of the feed see exactly the rows that changed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::AddCDCFile;
use deltalake::parquet::arrow::ArrowWriter;

use super::write::{ReadError, conform};
use super::writer_properties;
use crate::model::Dataset;

/// The column naming a change row's kind.
pub const CHANGE_TYPE: &str = "_change_type";
/// The folder of change files inside a table.
const CHANGE_DIR: &str = "_change_data";
/// Bytes of a change file before the next one is started.
const FILE_BYTES: usize = 128 * 1024 * 1024;

/// Writes change rows into one or more Parquet files under `_change_data/`.
pub struct CdcWriter {
    table_dir: PathBuf,
    data: SchemaRef,
    schema: SchemaRef,
    props: deltalake::parquet::file::properties::WriterProperties,
    open: Option<(String, ArrowWriter<File>)>,
    done: Vec<AddCDCFile>,
}

impl std::fmt::Debug for CdcWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CdcWriter").field("table_dir", &self.table_dir).field("files", &self.done.len()).finish()
    }
}

impl CdcWriter {
    /// A writer of `dataset`'s change rows in `table_dir`.
    pub fn new(dataset: &Dataset, table_dir: &Path) -> Self {
        let data: SchemaRef = Arc::new(dataset.arrow_schema());
        let mut fields: Vec<Field> = data.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, false));
        Self {
            table_dir: table_dir.to_path_buf(),
            data,
            schema: Arc::new(Schema::new(fields)),
            props: writer_properties(dataset),
            open: None,
            done: Vec::new(),
        }
    }

    /// Writes `batch` (shaped as the dataset) with every row of kind `change`.
    pub fn write(&mut self, batch: &RecordBatch, change: &str) -> Result<(), ReadError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let data = conform(batch, &self.data)?;
        let mut columns = data.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![change; batch.num_rows()])));
        let rows = RecordBatch::try_new(self.schema.clone(), columns)?;
        if self.open.is_none() {
            let rel = format!("{CHANGE_DIR}/cdc-{}.zstd.parquet", hex::encode(rand::random::<[u8; 16]>()));
            let path = self.table_dir.join(&rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| ReadError::Io(dir.to_path_buf(), e))?;
            }
            let file = File::create(&path).map_err(|e| ReadError::Io(path.clone(), e))?;
            let writer = ArrowWriter::try_new(file, self.schema.clone(), Some(self.props.clone()))
                .map_err(|e| ReadError::Parquet(path.clone(), e))?;
            self.open = Some((rel, writer));
        }
        if let Some((rel, writer)) = &mut self.open {
            writer.write(&rows).map_err(|e| ReadError::Parquet(self.table_dir.join(rel.as_str()), e))?;
            if writer.bytes_written() + writer.in_progress_size() >= FILE_BYTES {
                self.close_open()?;
            }
        }
        Ok(())
    }

    fn close_open(&mut self) -> Result<(), ReadError> {
        if let Some((rel, writer)) = self.open.take() {
            let path = self.table_dir.join(&rel);
            let file = writer.into_inner().map_err(|e| ReadError::Parquet(path.clone(), e))?;
            file.sync_all().map_err(|e| ReadError::Io(path.clone(), e))?;
            let size = file.metadata().map_err(|e| ReadError::Io(path.clone(), e))?.len();
            self.done.push(AddCDCFile {
                path: rel,
                size: i64::try_from(size).unwrap_or(i64::MAX),
                partition_values: Default::default(),
                data_change: false,
                tags: None,
            });
        }
        Ok(())
    }

    /// Closes the last file; the change files to commit.
    pub fn finish(mut self) -> Result<CdcFiles, ReadError> {
        let closed = self.close_open();
        let files = CdcFiles { table_dir: self.table_dir.clone(), files: std::mem::take(&mut self.done) };
        match closed {
            Ok(()) => Ok(files),
            Err(e) => {
                files.discard();
                Err(e)
            }
        }
    }
}

impl Drop for CdcWriter {
    /// A writer dropped before `finish` leaves no files behind.
    fn drop(&mut self) {
        if let Some((rel, _)) = self.open.take() {
            let _ = std::fs::remove_file(self.table_dir.join(rel));
        }
        for f in self.done.drain(..) {
            let _ = std::fs::remove_file(self.table_dir.join(&f.path));
        }
    }
}

/// Change files written and not yet committed.
#[derive(Debug, Default)]
pub struct CdcFiles {
    table_dir: PathBuf,
    /// Their actions.
    pub files: Vec<AddCDCFile>,
}

impl CdcFiles {
    /// Removes the files (an upsert that will not commit them).
    pub fn discard(self) {
        for f in &self.files {
            let _ = std::fs::remove_file(self.table_dir.join(&f.path));
        }
    }
}
