//! Upsert as copy-on-write in one commit, in bounded memory.
//!
//! The upload's keys are hashed to 128 bits. The table's files are read on
//! their key columns only and every row whose key the upload carries is
//! marked. Files with marked rows are rewritten without them, the upload is
//! written as new files, and one commit removes the rewritten files and adds
//! the new ones: readers see the old version or the new one, never a mix.
//!
//! Memory does not grow with the table or the upload: one pass holds at most
//! [`PASS_KEYS`] key hashes (more keys take more passes over the table's key
//! columns, each on its share of the hash space), a bit per row of each
//! touched file, and the writer's open file.

use std::collections::HashMap;
use std::fs::File;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{FieldRef, SchemaRef};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::protocol::{DeltaOperation, MergePredicate};
use serde_json::Value;

use super::cdc::CdcWriter;
use super::write::{PushFiles, PushWriter, ReadError, ReadResult, commit_actions, widen, write_files};
use super::{LakeError, delta};
use crate::model::Dataset;

/// Key hashes one pass holds in memory (16 bytes each: 64 MiB).
const PASS_KEYS: u64 = 4 << 20;
/// Rows per batch read back from a data file.
const READ_BATCH_ROWS: usize = 64 * 1024;

type Res<T> = ReadResult<T>;

/// Hashes primary keys to 128 bits (XXH3-128 with a seed per upsert), the
/// same way for the upload and the table within one upsert.
struct KeyHasher {
    converter: RowConverter,
    seed: u64,
}

impl KeyHasher {
    fn new(key_fields: &[FieldRef]) -> Res<Self> {
        let converter = RowConverter::new(key_fields.iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        Ok(Self { converter, seed: std::hash::RandomState::new().hash_one(0u64) })
    }

    fn hashes(&self, columns: &[ArrayRef]) -> Res<Vec<u128>> {
        let rows = self.converter.convert_columns(columns)?;
        Ok(rows.iter().map(|r| twox_hash::XxHash3_128::oneshot_with_seed(self.seed, r.as_ref())).collect())
    }
}

/// The pass a key hash belongs to.
fn pass_of(h: u128, passes: u64) -> u64 {
    ((h >> 64) as u64) % passes
}

/// A pass's key hashes, sorted, with a directory on their top bits so a
/// lookup searches a handful of entries.
struct KeyIndex {
    hashes: Vec<u128>,
    directory: Vec<u32>,
}

const DIRECTORY_BITS: u32 = 16;

impl KeyIndex {
    fn new(mut hashes: Vec<u128>) -> Self {
        hashes.sort_unstable();
        let mut directory = vec![0u32; (1 << DIRECTORY_BITS) + 1];
        for h in &hashes {
            directory[Self::slot(*h) + 1] += 1;
        }
        for i in 1..directory.len() {
            directory[i] += directory[i - 1];
        }
        Self { hashes, directory }
    }

    fn slot(h: u128) -> usize {
        (h >> (128 - DIRECTORY_BITS)) as usize
    }

    /// Where `h` is among the pass's hashes.
    fn position(&self, h: u128) -> Option<usize> {
        let s = Self::slot(h);
        let (lo, hi) = (self.directory[s] as usize, self.directory[s + 1] as usize);
        self.hashes[lo..hi].binary_search(&h).ok().map(|i| lo + i)
    }
}

/// A table file and the rows of it the upload replaces.
struct TableFile {
    path: PathBuf,
    remove: deltalake::kernel::Remove,
    /// One bit per row of the file, set for rows to drop; `None` while untouched.
    marks: Option<Vec<u64>>,
}

/// A table file's rows, optionally only the named columns, and its row count.
fn read_file(path: &Path, columns: Option<&[String]>) -> Res<(u64, impl Iterator<Item = Res<RecordBatch>>)> {
    let pq = |e| ReadError::Parquet(path.to_path_buf(), e);
    let file = File::open(path).map_err(|e| ReadError::Io(path.to_path_buf(), e))?;
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq)?.with_batch_size(READ_BATCH_ROWS);
    let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    if let Some(columns) = columns {
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().map(String::as_str));
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(pq)?;
    Ok((rows, reader.map(|b| b.map_err(ReadError::from))))
}

fn key_columns(batch: &RecordBatch, key: &[String], schema: &SchemaRef) -> Res<Vec<ArrayRef>> {
    key.iter()
        .map(|k| {
            let field = schema.field_with_name(k)?;
            let c = batch
                .column_by_name(k)
                .ok_or_else(|| ArrowError::SchemaError(format!("key column {k} missing from a data file")))?;
            Ok(if c.data_type() == field.data_type() { c.clone() } else { arrow::compute::cast(c, field.data_type())? })
        })
        .collect()
}

/// Marks, in each table file, the rows whose key the upload carries.
/// Returns how many rows were marked. With `cdc`, the upload's rows are
/// written to it as `update_postimage` (a table row had their key) or
/// `insert`, each pass its share of them.
fn mark(
    upload: &[PathBuf],
    upload_rows: u64,
    pass_keys: u64,
    key: &[String],
    schema: &SchemaRef,
    files: &mut [TableFile],
    mut cdc: Option<&mut CdcWriter>,
) -> Res<u64> {
    let key_fields: Vec<FieldRef> =
        key.iter().map(|k| schema.field_with_name(k).map(|f| Arc::new(f.clone()))).collect::<Result<_, _>>()?;
    let hasher = KeyHasher::new(&key_fields)?;
    let passes = upload_rows.div_ceil(pass_keys.max(1)).max(1);
    let mut marked = 0u64;
    for pass in 0..passes {
        let mut hashes = Vec::new();
        for path in upload {
            for batch in read_file(path, Some(key))?.1 {
                let batch = batch?;
                hashes.extend(
                    hasher
                        .hashes(&key_columns(&batch, key, schema)?)?
                        .into_iter()
                        .filter(|h| pass_of(*h, passes) == pass),
                );
            }
        }
        if hashes.is_empty() {
            continue;
        }
        let index = KeyIndex::new(hashes);
        // Which of the pass's upload keys a table row has.
        let mut found = vec![false; index.hashes.len()];
        for file in files.iter_mut() {
            let (rows, batches) = read_file(&file.path, Some(key))?;
            let mut offset = 0usize;
            for batch in batches {
                let batch = batch?;
                for (i, h) in hasher.hashes(&key_columns(&batch, key, schema)?)?.into_iter().enumerate() {
                    if pass_of(h, passes) == pass
                        && let Some(at) = index.position(h)
                    {
                        found[at] = true;
                        let marks = file.marks.get_or_insert_with(|| vec![0u64; (rows as usize).div_ceil(64)]);
                        let row = offset + i;
                        if let Some(word) = marks.get_mut(row / 64) {
                            if *word & (1 << (row % 64)) == 0 {
                                marked += 1;
                            }
                            *word |= 1 << (row % 64);
                        }
                    }
                }
                offset += batch.num_rows();
            }
        }
        if let Some(cdc) = cdc.as_deref_mut() {
            for path in upload {
                for batch in read_file(path, None)?.1 {
                    let batch = batch?;
                    let hashes = hasher.hashes(&key_columns(&batch, key, schema)?)?;
                    let kind = |want: bool| -> BooleanArray {
                        hashes
                            .iter()
                            .map(|h| {
                                Some(
                                    pass_of(*h, passes) == pass
                                        && index.position(*h).is_some_and(|at| found[at]) == want,
                                )
                            })
                            .collect()
                    };
                    cdc.write(&arrow::compute::filter_record_batch(&batch, &kind(true))?, "update_postimage")?;
                    cdc.write(&arrow::compute::filter_record_batch(&batch, &kind(false))?, "insert")?;
                }
            }
        }
    }
    Ok(marked)
}

/// Writes what the touched files keep; with `cdc`, the rows they drop as `update_preimage`.
fn rewrite(
    files: &[TableFile],
    writer: &mut PushWriter,
    id: &str,
    mut cdc: Option<&mut CdcWriter>,
) -> Result<(), LakeError> {
    for file in files {
        let Some(marks) = &file.marks else { continue };
        let (_, batches) = read_file(&file.path, None).map_err(|e| e.into_lake(id))?;
        let mut offset = 0usize;
        for batch in batches {
            let batch = batch.map_err(|e| e.into_lake(id))?;
            let keep: BooleanArray =
                (offset..offset + batch.num_rows()).map(|r| Some(marks[r / 64] & (1 << (r % 64)) == 0)).collect();
            offset += batch.num_rows();
            let kept =
                arrow::compute::filter_record_batch(&batch, &keep).map_err(|e| ReadError::from(e).into_lake(id))?;
            if kept.num_rows() > 0 {
                writer.write(&kept)?;
            }
            if let Some(cdc) = cdc.as_deref_mut() {
                let dropped = arrow::compute::not(&keep).map_err(|e| ReadError::from(e).into_lake(id))?;
                let dropped = arrow::compute::filter_record_batch(&batch, &dropped)
                    .map_err(|e| ReadError::from(e).into_lake(id))?;
                cdc.write(&dropped, "update_preimage").map_err(|e| e.into_lake(id))?;
            }
        }
    }
    Ok(())
}

/// Upserts the upload's files into `table` as one commit; returns the rows
/// the upload replaced. On failure the upload's files are removed.
pub(super) async fn upsert(
    table_dir: &Path,
    dataset: &Dataset,
    table: &DeltaTable,
    upload: PushFiles,
    app_metadata: HashMap<String, Value>,
) -> Result<u64, LakeError> {
    let result = upsert_files(table_dir, dataset, table, &upload, app_metadata).await;
    if result.is_err() {
        upload.discard();
    }
    result
}

async fn upsert_files(
    table_dir: &Path,
    dataset: &Dataset,
    table: &DeltaTable,
    upload: &PushFiles,
    app_metadata: HashMap<String, Value>,
) -> Result<u64, LakeError> {
    let id = dataset.id.as_str();
    let state = table.snapshot().map_err(delta(id))?;
    let mut files: Vec<TableFile> = state
        .log_data()
        .iter()
        .map(|f| TableFile { path: table_dir.join(f.path().as_ref()), remove: f.remove_action(true), marks: None })
        .collect();

    let key = dataset.primary_key.clone();
    let upload_paths: Vec<PathBuf> = upload.adds.iter().map(|a| table_dir.join(&a.path)).collect();
    let upload_rows = upload.rows();
    // The table's change data feed, when enabled, gets the rows that changed.
    let cdc = state.table_config().enable_change_data_feed.unwrap_or(false).then(|| CdcWriter::new(dataset, table_dir));
    let (marked, files, cdc) = {
        let schema = Arc::new(dataset.arrow_schema());
        tokio::task::spawn_blocking(move || {
            let mut cdc = cdc;
            mark(&upload_paths, upload_rows, PASS_KEYS, &key, &schema, &mut files, cdc.as_mut())
                .map(|m| (m, files, cdc))
        })
        .await
        .map_err(|e| LakeError::Io { path: table_dir.to_path_buf(), source: std::io::Error::other(e) })?
        .map_err(|e| e.into_lake(id))?
    };
    let touched = files.iter().filter(|f| f.marks.is_some()).count();
    tracing::info!(marked, files = files.len(), touched, "upsert: rows matched");

    let files = Arc::new(files);
    let cdc = Arc::new(std::sync::Mutex::new(cdc));
    let rewritten = {
        let (files, owner, cdc) = (files.clone(), id.to_string(), cdc.clone());
        write_files(dataset, table_dir, table.log_store().object_store(None), move |writer| {
            let mut cdc = cdc.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            rewrite(&files, writer, &owner, cdc.as_mut())
        })
        .await?
    };
    let cdc = cdc.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let changes = match cdc.map(CdcWriter::finish).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            rewritten.discard();
            return Err(e.into_lake(id));
        }
    };

    let mut actions: Vec<Action> = Vec::with_capacity(upload.adds.len() + rewritten.adds.len() + touched + 1);
    let widened = match widen(state, dataset) {
        Ok(w) => w,
        Err(e) => {
            rewritten.discard();
            changes.discard();
            return Err(e);
        }
    };
    actions.extend(widened);
    actions.extend(files.iter().filter(|f| f.marks.is_some()).map(|f| Action::Remove(f.remove.clone())));
    actions.extend(upload.adds.iter().chain(&rewritten.adds).cloned().map(Action::Add));
    actions.extend(changes.files.iter().cloned().map(Action::Cdc));
    let on = dataset.primary_key.iter().map(|k| format!("target.{k} = source.{k}")).collect::<Vec<_>>().join(" AND ");
    let operation = DeltaOperation::Merge {
        predicate: None,
        merge_predicate: Some(on),
        matched_predicates: vec![MergePredicate { action_type: "update".into(), predicate: None }],
        not_matched_predicates: vec![MergePredicate { action_type: "insert".into(), predicate: None }],
        not_matched_by_source_predicates: Vec::new(),
    };
    if let Err(e) = commit_actions(table, state, actions, operation, app_metadata, id).await {
        rewritten.discard();
        changes.discard();
        return Err(e);
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::{Lake, PushInfo, WriteMode};
    use crate::model::Dataset;
    use arrow::array::{Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{Field, Schema};

    fn dataset() -> Dataset {
        let input: crate::model::NewDataset = serde_json::from_value(serde_json::json!({
            "department": "gongan", "name": "people", "title": "人口", "resource_code": "1-01",
            "classification": "basic", "sharing": "unconditional", "update_cycle": "daily",
            "primary_key": ["id"],
            "columns": [
                {"name": "id", "type": "string", "nullable": false},
                {"name": "v", "type": "int64"}
            ]
        }))
        .expect("json");
        crate::validate::dataset(input, chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("date")).expect("valid")
    }

    /// A staging file as the connectors write it: the dataset's columns and row numbers.
    fn staged(dir: &Path, name: &str, ds: &Dataset, ids: std::ops::Range<u64>, v: i64) -> PathBuf {
        let mut fields: Vec<Field> = ds.arrow_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("__gdx_row", arrow::datatypes::DataType::UInt64, false));
        let schema = Arc::new(Schema::new(fields));
        let path = dir.join(name);
        let mut w = arrow::ipc::writer::FileWriter::try_new(File::create(&path).expect("create"), &schema).expect("w");
        let n = ids.end - ids.start;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(ids.clone().map(|i| format!("k{i:06}")))),
                Arc::new(Int64Array::from(vec![v; n as usize])),
                Arc::new(UInt64Array::from_iter_values(1..=n)),
            ],
        )
        .expect("batch");
        w.write(&batch).expect("write");
        w.finish().expect("finish");
        path
    }

    fn info(version: i64, mode: WriteMode, rows: i64) -> PushInfo {
        PushInfo { version, mode, rows_written: rows, rejected: 0, committed_by: "s".into(), idempotency_key: None }
    }

    #[tokio::test]
    async fn upsert_replaces_matching_rows_in_one_commit_and_rewrites_only_touched_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::new(dir.path().join("lake"));
        let ds = dataset();
        for i in 0..3u64 {
            let f = staged(dir.path(), &format!("base{i}"), &ds, i * 1000..(i + 1) * 1000, 0);
            let files = lake.write_staged(&ds, &f).await.expect("write");
            lake.commit(&ds, files, info(i as i64 + 1, WriteMode::Append, 1000)).await.expect("append");
        }
        let before = lake.open(&ds).await.expect("open").expect("table");
        let before_files = super::super::file_set(&before, "gongan.people").expect("files");

        // Keys 1500..4500: half of the second file, all of the third, 1500 new.
        let up = staged(dir.path(), "up", &ds, 1500..4500, 1);
        let files = lake.write_staged(&ds, &up).await.expect("write");
        let c = lake.commit(&ds, files, info(4, WriteMode::Upsert, 3000)).await.expect("upsert");
        assert_eq!(c.row_count, 4500);
        assert_eq!(c.delta_version, 3, "one commit");
        let rows = lake.read(&ds, c.delta_version).await.expect("read");
        let mut seen = std::collections::BTreeMap::new();
        for b in &rows {
            let ids = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).expect("cast");
            let ids = ids.as_any().downcast_ref::<StringArray>().expect("ids");
            let vs = b.column(1).as_any().downcast_ref::<Int64Array>().expect("v");
            for i in 0..b.num_rows() {
                assert!(seen.insert(ids.value(i).to_string(), vs.value(i)).is_none(), "{} twice", ids.value(i));
            }
        }
        assert_eq!(seen.len(), 4500);
        assert!(seen.iter().all(|(k, v)| *v == i64::from(k[1..].parse::<u64>().expect("n") >= 1500)));
        // The first file had no matching key and stays as it was.
        let after = lake.open(&ds).await.expect("open").expect("table");
        let after_files = super::super::file_set(&after, "gongan.people").expect("files");
        assert_eq!(before_files.intersection(&after_files).count(), 1);
        // The version before the upsert still reads as it was.
        assert_eq!(lake.read(&ds, 2).await.expect("read").iter().map(|b| b.num_rows()).sum::<usize>(), 3000);

        // Delta's change data feed of the upsert holds the rows that changed,
        // not the rewritten files' other rows: 1500 replaced (before and
        // after) and 1500 new; the appends before it read as inserts.
        let feed = |from: u64, to: u64| {
            let table = after.clone();
            async move {
                let builder = table.scan_cdf().with_starting_version(from).with_ending_version(to);
                let provider = deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(builder).expect("cdf");
                let ctx = datafusion::execution::context::SessionContext::new();
                ctx.register_table("feed", Arc::new(provider)).expect("register");
                let batches = ctx
                    .sql("SELECT _change_type, count(*) AS n, min(v) AS lo, max(v) AS hi FROM feed GROUP BY 1 ORDER BY 1")
                    .await
                    .expect("sql")
                    .collect()
                    .await
                    .expect("collect");
                arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string()
            }
        };
        let upserted = feed(3, 3).await;
        let want = [
            "+------------------+------+----+----+",
            "| _change_type     | n    | lo | hi |",
            "+------------------+------+----+----+",
            "| insert           | 1500 | 1  | 1  |",
            "| update_postimage | 1500 | 1  | 1  |",
            "| update_preimage  | 1500 | 0  | 0  |",
            "+------------------+------+----+----+",
        ]
        .join("\n");
        assert_eq!(upserted, want);
        assert!(feed(1, 2).await.contains("| insert       | 2000 | 0  | 0  |"), "{}", feed(1, 2).await);
    }

    #[tokio::test]
    async fn marking_in_several_passes_finds_the_same_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = Lake::new(dir.path().join("lake"));
        let ds = dataset();
        for i in 0..2u64 {
            let f = staged(dir.path(), &format!("base{i}"), &ds, i * 5000..(i + 1) * 5000, 0);
            let files = lake.write_staged(&ds, &f).await.expect("write");
            lake.commit(&ds, files, info(i as i64 + 1, WriteMode::Append, 5000)).await.expect("append");
        }
        let table = lake.open(&ds).await.expect("open").expect("table");
        let state = table.snapshot().expect("snapshot");
        let schema = state.snapshot().arrow_schema();
        let table_dir = lake.table_path(&ds);
        let files = || -> Vec<TableFile> {
            state
                .log_data()
                .iter()
                .map(|f| TableFile {
                    path: table_dir.join(f.path().as_ref()),
                    remove: f.remove_action(true),
                    marks: None,
                })
                .collect()
        };
        let up = staged(dir.path(), "up", &ds, 4000..7000, 1);
        let upload = lake.write_staged(&ds, &up).await.expect("write");
        let paths: Vec<PathBuf> = upload.adds.iter().map(|a| table_dir.join(&a.path)).collect();
        let key = vec!["id".to_string()];
        let (mut one, mut many) = (files(), files());
        assert_eq!(mark(&paths, 3000, PASS_KEYS, &key, &schema, &mut one, None).expect("one pass"), 3000);
        assert_eq!(mark(&paths, 3000, 700, &key, &schema, &mut many, None).expect("five passes"), 3000);
        upload.discard();
        let bits = |f: &[TableFile]| -> Vec<Option<Vec<u64>>> { f.iter().map(|f| f.marks.clone()).collect() };
        assert_eq!(bits(&one), bits(&many));
        let set: u32 = one.iter().flat_map(|f| f.marks.iter().flatten()).map(|w| w.count_ones()).sum();
        assert_eq!(set, 3000);
    }
}
