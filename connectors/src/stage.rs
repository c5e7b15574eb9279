//! Staging an upload: decode, convert and check every row, and hand the
//! valid rows on as they are checked: to a [`RowSink`] (the lake's Parquet
//! writers, [`stage_to`]), or to a local Arrow IPC file ([`stage`], which
//! skip mode needs: repeated keys are only known at the end, and their rows
//! are then taken out of the file).
//!
//! Everything streams batch by batch: memory holds one batch, the first
//! errors, and one primary-key bucket at the end ([`crate::keys`]), whatever
//! the upload's size.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use arrow::row::{RowConverter, SortField};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use gdx_catalog::{Column, Dataset};

use crate::convert::{CellError, Raw, convert};
use crate::csv::CsvDecoder;
use crate::error::{Error, Result};
use crate::format::{Charset, Format};
use crate::keys::KeySet;
use crate::transcode::{SkipBom, Transcode};

/// Name of the staging column that carries each row's number in the upload.
pub const ROW_COLUMN: &str = "__gdx_row";
/// Most errors listed in an answer; all are counted.
pub const MAX_LISTED: usize = 100;
/// Rows per decoded batch (NDJSON, Parquet, Arrow; a CSV batch is a buffer of text, see `csv`).
pub const BATCH_ROWS: usize = 8192;

/// How to stage an upload.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// Keep valid rows and set rejected ones aside (`on_error=skip`) instead of failing on the first problem.
    pub skip_invalid: bool,
    /// Where temporary files go (the same file system as the data directory).
    pub temp_dir: PathBuf,
}

/// A problem with a row of the upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    /// Data row, counted from 1 (the header of a CSV file is not a row); `None` for the upload as a whole.
    pub row: Option<u64>,
    /// The column concerned, if one is.
    pub column: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The result of staging.
#[derive(Debug)]
pub struct Staged {
    /// The staged rows: the dataset's columns plus [`ROW_COLUMN`], as an Arrow
    /// IPC file (removed on drop); `None` when they went to a [`RowSink`].
    pub file: Option<tempfile::TempPath>,
    /// Data rows read from the upload.
    pub rows_read: u64,
    /// Rows staged for commit.
    pub rows_valid: u64,
    /// Rows set aside (skip mode).
    pub rejected: u64,
    /// The first problems, by row.
    pub errors: Vec<RowError>,
    /// How many problems there were in all.
    pub error_count: u64,
    /// Rejected rows with their reasons, one JSON object per line (skip mode, when any).
    pub rejects: Option<tempfile::TempPath>,
}

impl Staged {
    /// Whether the upload may be committed: no problem, or skip mode.
    pub fn committable(&self, skip_invalid: bool) -> bool {
        skip_invalid || self.error_count == 0
    }
}

/// The Arrow schema of a staging file for `dataset`.
pub fn staging_schema(dataset: &Dataset) -> SchemaRef {
    let mut fields: Vec<Field> = dataset.arrow_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW_COLUMN, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// Maps source column names to the dataset's columns: by name, then
/// case-insensitively, then by the column's title (Chinese headers).
fn map_columns(columns: &[Column], names: &[String]) -> Result<Vec<Option<usize>>> {
    let mut map = vec![None; columns.len()];
    let mut unknown = Vec::new();
    for (si, raw_name) in names.iter().enumerate() {
        let name = raw_name.trim().trim_start_matches('\u{feff}');
        let found = columns
            .iter()
            .position(|c| c.name == name)
            .or_else(|| columns.iter().position(|c| c.name.eq_ignore_ascii_case(name)))
            .or_else(|| columns.iter().position(|c| c.title.as_deref() == Some(name)));
        match found {
            Some(ci) if map[ci].is_none() => map[ci] = Some(si),
            Some(ci) => {
                return Err(Error::Columns {
                    message: format!("'{name}' and another column both name '{}'", columns[ci].name),
                });
            }
            None => unknown.push(name.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(Error::Columns {
            message: format!(
                "unknown column(s) {}; the dataset has {}",
                unknown.join(", "),
                columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let missing: Vec<&str> =
        columns.iter().zip(&map).filter(|(c, m)| m.is_none() && !c.nullable).map(|(c, _)| c.name.as_str()).collect();
    if !missing.is_empty() {
        return Err(Error::Columns { message: format!("required column(s) missing: {}", missing.join(", ")) });
    }
    Ok(map)
}

/// A decoded batch: raw columns in the dataset's order, its row count, and row-level problems.
struct Decoded {
    raw: Vec<Raw>,
    rows: usize,
    row_errors: Vec<CellError>,
    /// Row numbers (from 1) of each row of the batch.
    first_row: u64,
}

enum Source {
    Csv {
        decoder: CsvDecoder,
        map: Vec<Option<usize>>,
    },
    Ndjson {
        lines: Box<dyn BufRead + Send>,
        columns: Vec<String>,
        line: u64,
        eof: bool,
    },
    Batches {
        iter: Box<dyn Iterator<Item = Result<RecordBatch, arrow::error::ArrowError>> + Send>,
        map: Vec<Option<usize>>,
        next_row: u64,
        format: Format,
    },
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

fn malformed(format: Format, row: Option<u64>, message: impl Into<String>) -> Error {
    Error::Malformed { format: format.name(), row, message: message.into() }
}

/// Where an upload is read from.
pub enum Input {
    /// A file on disk (any format).
    Path(PathBuf),
    /// A byte stream read as it arrives (CSV, NDJSON and Arrow IPC streams;
    /// Parquet needs its footer first, so a file).
    Stream(Box<dyn Read + Send>),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Input::Stream(_) => f.write_str("Stream"),
        }
    }
}

impl Input {
    fn reader(self) -> Result<Box<dyn Read + Send>> {
        match self {
            Input::Path(p) => Ok(Box::new(open(&p)?)),
            Input::Stream(r) => Ok(r),
        }
    }
}

impl Source {
    fn open(input: Input, format: Format, columns: &[Column]) -> Result<Self> {
        match format {
            Format::Csv(charset) => {
                let file = input.reader()?;
                let inner: Box<dyn Read + Send> = match charset {
                    Charset::Utf8 => Box::new(SkipBom::new(file)),
                    Charset::Gbk => Box::new(Transcode::new(file, encoding_rs::GBK)),
                    Charset::Gb18030 => Box::new(Transcode::new(file, encoding_rs::GB18030)),
                };
                let mut buf: Box<dyn BufRead + Send> = Box::new(BufReader::with_capacity(1 << 16, inner));
                let mut header = String::new();
                buf.read_line(&mut header)
                    .map_err(|e| malformed(format, None, format!("cannot read the header row: {e}")))?;
                if header.trim_end_matches('\n').trim_end_matches('\r').contains('\r') {
                    return Err(malformed(
                        format,
                        None,
                        "lines end in a lone carriage return (CR): save the file with LF or CRLF line ends",
                    ));
                }
                if header.trim().is_empty() {
                    return Err(malformed(
                        format,
                        None,
                        "the file is empty: a header row naming the columns is required",
                    ));
                }
                let (schema, _) = arrow::csv::reader::Format::default()
                    .with_header(true)
                    .infer_schema(std::io::Cursor::new(header.as_bytes()), Some(0))
                    .map_err(|e| malformed(format, None, format!("bad header row: {e}")))?;
                let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
                let map = map_columns(columns, &names)?;
                Ok(Source::Csv { decoder: CsvDecoder::new(Box::new(buf), names.len()), map })
            }
            Format::Ndjson => Ok(Source::Ndjson {
                lines: Box::new(BufReader::with_capacity(1 << 16, input.reader()?)),
                columns: columns.iter().map(|c| c.name.clone()).collect(),
                line: 0,
                eof: false,
            }),
            Format::Parquet => {
                let Input::Path(path) = input else {
                    return Err(Error::Unsupported { message: "a Parquet upload is read from a file".into() });
                };
                let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(open(&path)?)
                    .map_err(|e| malformed(format, None, e.to_string()))?;
                let names: Vec<String> = builder.schema().fields().iter().map(|f| f.name().clone()).collect();
                let map = map_columns(columns, &names)?;
                let reader =
                    builder.with_batch_size(BATCH_ROWS).build().map_err(|e| malformed(format, None, e.to_string()))?;
                Ok(Source::Batches { iter: Box::new(reader), map, next_row: 1, format })
            }
            Format::ArrowStream => {
                let reader =
                    arrow::ipc::reader::StreamReader::try_new(BufReader::with_capacity(1 << 16, input.reader()?), None)
                        .map_err(|e| malformed(format, None, e.to_string()))?;
                let names: Vec<String> = reader.schema().fields().iter().map(|f| f.name().clone()).collect();
                let map = map_columns(columns, &names)?;
                Ok(Source::Batches { iter: Box::new(reader), map, next_row: 1, format })
            }
        }
    }

    fn next(&mut self) -> Result<Option<Decoded>> {
        match self {
            Source::Csv { decoder, map } => {
                let batch =
                    decoder.next_batch().map_err(|e| malformed(Format::Csv(Charset::Utf8), e.row, e.message))?;
                let Some(batch) = batch else { return Ok(None) };
                let raw = map
                    .iter()
                    .map(|m| match m {
                        Some(si) => Raw::Strings(batch.columns[*si].clone()),
                        None => Raw::Missing,
                    })
                    .collect();
                Ok(Some(Decoded { raw, rows: batch.rows, row_errors: Vec::new(), first_row: batch.first_row }))
            }
            Source::Ndjson { lines, columns, line, eof } => {
                if *eof {
                    return Ok(None);
                }
                let first_row = *line + 1;
                let mut cells: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(BATCH_ROWS); columns.len()];
                let mut row_errors = Vec::new();
                let mut rows = 0;
                let mut text = String::new();
                while rows < BATCH_ROWS {
                    text.clear();
                    let n = lines
                        .read_line(&mut text)
                        .map_err(|e| malformed(Format::Ndjson, Some(*line + 1), e.to_string()))?;
                    if n == 0 {
                        *eof = true;
                        break;
                    }
                    *line += 1;
                    let index = rows;
                    rows += 1;
                    for c in cells.iter_mut() {
                        c.push(None);
                    }
                    if text.trim().is_empty() {
                        row_errors.push(CellError { index, column: None, message: "empty line".into() });
                        continue;
                    }
                    match serde_json::from_str::<serde_json::Value>(&text) {
                        Ok(serde_json::Value::Object(obj)) => {
                            for (k, v) in obj {
                                let Some(ci) = columns.iter().position(|c| *c == k) else {
                                    row_errors.push(CellError {
                                        index,
                                        column: None,
                                        message: format!("unknown field '{k}'"),
                                    });
                                    continue;
                                };
                                cells[ci][index] = match v {
                                    serde_json::Value::Null => None,
                                    serde_json::Value::String(s) => Some(s),
                                    serde_json::Value::Bool(b) => Some(b.to_string()),
                                    serde_json::Value::Number(n) => Some(n.to_string()),
                                    _ => {
                                        row_errors.push(CellError {
                                            index,
                                            column: Some(ci),
                                            message: "must be a string, number, boolean or null".into(),
                                        });
                                        None
                                    }
                                };
                            }
                        }
                        Ok(_) => row_errors.push(CellError {
                            index,
                            column: None,
                            message: "a line must hold one JSON object".into(),
                        }),
                        Err(e) => {
                            row_errors.push(CellError { index, column: None, message: format!("not valid JSON: {e}") })
                        }
                    }
                }
                if rows == 0 {
                    return Ok(None);
                }
                let raw = cells.into_iter().map(|c| Raw::Strings(StringArray::from(c))).collect();
                Ok(Some(Decoded { raw, rows, row_errors, first_row }))
            }
            Source::Batches { iter, map, next_row, format } => {
                let Some(batch) = iter.next() else { return Ok(None) };
                let batch = batch.map_err(|e| malformed(*format, Some(*next_row), e.to_string()))?;
                let raw = map
                    .iter()
                    .map(|m| match m {
                        Some(si) => Raw::Typed(batch.column(*si).clone()),
                        None => Raw::Missing,
                    })
                    .collect();
                let first_row = *next_row;
                *next_row += batch.num_rows() as u64;
                Ok(Some(Decoded { raw, rows: batch.num_rows(), row_errors: Vec::new(), first_row }))
            }
        }
    }
}

/// Bounded list of the first problems by row.
#[derive(Default)]
struct Problems {
    listed: Vec<RowError>,
    count: u64,
}

impl Problems {
    fn push(&mut self, e: RowError) {
        self.count += 1;
        self.listed.push(e);
        if self.listed.len() > 50 * MAX_LISTED {
            self.trim();
        }
    }

    fn trim(&mut self) {
        self.listed.sort_by_key(|e| e.row.unwrap_or(0));
        self.listed.truncate(MAX_LISTED);
    }
}

fn display(a: &dyn Array, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    ArrayFormatter::try_new(a, &FormatOptions::default()).ok().map(|f| f.value(i).to_string())
}

struct Rejects {
    writer: BufWriter<tempfile::NamedTempFile>,
}

impl Rejects {
    fn new(dir: &Path) -> Result<Self> {
        let f = tempfile::Builder::new()
            .prefix("rejects-")
            .suffix(".ndjson")
            .tempfile_in(dir)
            .map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        Ok(Self { writer: BufWriter::new(f) })
    }

    fn write(
        &mut self,
        row: u64,
        errors: &[(Option<String>, String)],
        values: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let line = serde_json::json!({
            "row": row,
            "errors": errors.iter().map(|(c, m)| serde_json::json!({"column": c, "message": m})).collect::<Vec<_>>(),
            "values": values,
        });
        let path = self.writer.get_ref().path().to_path_buf();
        serde_json::to_writer(&mut self.writer, &line)
            .map_err(|e| Error::Io { path: path.clone(), source: e.into() })?;
        self.writer.write_all(b"\n").map_err(|source| Error::Io { path, source })
    }

    fn finish(self) -> Result<tempfile::TempPath> {
        let f = self
            .writer
            .into_inner()
            .map_err(|e| Error::Io { path: PathBuf::from("rejects"), source: e.into_error() })?;
        Ok(f.into_temp_path())
    }
}

/// Receives the valid rows of an upload while it is checked: batches of the
/// dataset's columns plus [`ROW_COLUMN`].
pub trait RowSink {
    /// Takes one batch.
    fn write(&mut self, batch: &RecordBatch) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// The staging file as a sink.
struct IpcSink(FileWriter<BufWriter<File>>);

impl RowSink for IpcSink {
    fn write(&mut self, batch: &RecordBatch) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.write(batch)?)
    }
}

/// Stages the upload at `input` for `dataset` into an Arrow IPC file ([`Staged::file`]).
pub fn stage(input: &Path, format: Format, dataset: &Dataset, opts: &StageOptions) -> Result<Staged> {
    let schema = staging_schema(dataset);
    let staged = tempfile::Builder::new()
        .prefix("stage-")
        .suffix(".arrow")
        .tempfile_in(&opts.temp_dir)
        .map_err(|source| Error::Io { path: opts.temp_dir.clone(), source })?;
    let staged_path = staged.path().to_path_buf();
    let mut sink = IpcSink(FileWriter::try_new(
        BufWriter::with_capacity(
            1 << 20,
            staged.reopen().map_err(|source| Error::Io { path: staged_path.clone(), source })?,
        ),
        &schema,
    )?);
    let mut out = check(Input::Path(input.to_path_buf()), format, dataset, opts, &mut sink)?;
    sink.0.finish()?;
    drop(sink);
    let mut file = staged.into_temp_path();
    if opts.skip_invalid && !out.duplicates.is_empty() {
        let (rewritten, dropped) = drop_rows(
            &file,
            &schema,
            &out.duplicates.iter().map(|d| (d.row, d.first)).collect(),
            out.rejects.as_mut(),
            &dataset.primary_key.join(", "),
            &opts.temp_dir,
        )?;
        file = rewritten;
        out.staged.rows_valid -= dropped;
        out.staged.rejected += dropped;
    }
    out.finish(Some(file))
}

/// Stages the upload from `input` for `dataset`, handing the valid rows to
/// `sink` as they are checked. Every problem fails the upload (`on_error`
/// skip needs [`stage`]); the sink's rows must then be thrown away.
pub fn stage_to(
    input: Input,
    format: Format,
    dataset: &Dataset,
    opts: &StageOptions,
    sink: &mut dyn RowSink,
) -> Result<Staged> {
    let opts = StageOptions { skip_invalid: false, ..opts.clone() };
    check(input, format, dataset, &opts, sink)?.finish(None)
}

/// What checking found, before the rejects file is closed.
struct Checked {
    staged: Staged,
    problems: Problems,
    duplicates: Vec<crate::keys::Duplicate>,
    rejects: Option<Rejects>,
}

impl Checked {
    fn finish(self, file: Option<tempfile::TempPath>) -> Result<Staged> {
        let Checked { mut staged, mut problems, rejects, .. } = self;
        problems.trim();
        staged.rejects = match rejects {
            Some(r) if staged.rejected > 0 => Some(r.finish()?),
            _ => None,
        };
        staged.file = file;
        staged.errors = problems.listed;
        staged.error_count = problems.count;
        Ok(staged)
    }
}

/// Decodes, converts and checks every row, sending the valid ones to `sink`.
fn check(
    input: Input,
    format: Format,
    dataset: &Dataset,
    opts: &StageOptions,
    sink: &mut dyn RowSink,
) -> Result<Checked> {
    let columns = &dataset.columns;
    let schema = staging_schema(dataset);
    let mut source = Source::open(input, format, columns)?;
    let pk: Vec<usize> = dataset.primary_key.iter().filter_map(|k| columns.iter().position(|c| &c.name == k)).collect();
    let converter =
        RowConverter::new(pk.iter().map(|i| SortField::new(columns[*i].column_type.arrow_type())).collect())?;
    let mut keys = KeySet::new(&opts.temp_dir)?;
    let mut problems = Problems::default();
    // Rows with problems hold nulls where the dataset allows none: the batch is
    // built nullable, filtered, then given the dataset's schema.
    let loose = Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ));
    let mut rejects = if opts.skip_invalid { Some(Rejects::new(&opts.temp_dir)?) } else { None };
    let (mut rows_read, mut rows_valid, mut rejected) = (0u64, 0u64, 0u64);

    // Decoding and checking overlap: one thread decodes the next batches while
    // this one converts, checks and writes the current one.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Decoded>>(2);
        scope.spawn(move || {
            loop {
                match source.next() {
                    Ok(Some(d)) => {
                        if tx.send(Ok(d)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        for d in rx {
            let d = d?;
            rows_read += d.rows as u64;
            let converted = convert(columns, &d.raw, d.rows)?;
            let mut bad: Vec<Vec<(Option<String>, String)>> = vec![Vec::new(); d.rows];
            for e in d.row_errors.into_iter().chain(converted.errors) {
                let column = e.column.map(|c| columns[c].name.clone());
                problems.push(RowError {
                    row: Some(d.first_row + e.index as u64),
                    column: column.clone(),
                    message: e.message.clone(),
                });
                bad[e.index].push((column, e.message));
            }
            let all_valid = bad.iter().all(Vec::is_empty);
            if let Some(rj) = rejects.as_mut() {
                for (i, errs) in bad.iter().enumerate().filter(|(_, b)| !b.is_empty()) {
                    let mut values = serde_json::Map::new();
                    for (c, r) in columns.iter().zip(&d.raw) {
                        let v = match r {
                            Raw::Strings(a) => display(a, i),
                            Raw::Typed(a) => display(a.as_ref(), i),
                            Raw::Missing => None,
                        };
                        values.insert(
                            c.name.clone(),
                            v.map(serde_json::Value::String).unwrap_or(serde_json::Value::Null),
                        );
                    }
                    rj.write(d.first_row + i as u64, errs, values)?;
                    rejected += 1;
                }
            }
            if !opts.skip_invalid && problems.count > 0 {
                // Nothing will be committed: keep reading only to count every problem.
                continue;
            }
            let row_numbers: ArrayRef =
                Arc::new(UInt64Array::from_iter_values((0..d.rows as u64).map(|i| d.first_row + i)));
            let mut arrays = converted.columns;
            arrays.push(row_numbers);
            // A batch without problems is passed on as it is, not copied.
            let arrays = if all_valid {
                arrays
            } else {
                let keep: arrow::array::BooleanArray = bad.iter().map(|b| Some(b.is_empty())).collect();
                filter_record_batch(&RecordBatch::try_new(loose.clone(), arrays)?, &keep)?.columns().to_vec()
            };
            let batch = RecordBatch::try_new(schema.clone(), arrays)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let key_rows =
                converter.convert_columns(&pk.iter().map(|i| batch.column(*i).clone()).collect::<Vec<_>>())?;
            let numbers = batch.column(columns.len()).as_primitive::<arrow::datatypes::UInt64Type>();
            for i in 0..batch.num_rows() {
                keys.insert(key_rows.row(i).as_ref(), numbers.value(i))?;
            }
            rows_valid += batch.num_rows() as u64;
            sink.write(&batch).map_err(|source| Error::Sink { source })?;
        }
        Ok(())
    })?;

    let key_names = dataset.primary_key.join(", ");
    let duplicates = keys.finish()?;
    for dup in &duplicates {
        problems.push(RowError {
            row: Some(dup.row),
            column: Some(key_names.clone()),
            message: format!("duplicate primary key: row {} has the same key", dup.first),
        });
    }
    Ok(Checked {
        staged: Staged {
            file: None,
            rows_read,
            rows_valid,
            rejected,
            errors: Vec::new(),
            error_count: 0,
            rejects: None,
        },
        problems,
        duplicates,
        rejects,
    })
}

/// Rewrites a staging file without the rows in `drop` (row → first row with its key), writing them to `rejects`.
fn drop_rows(
    file: &Path,
    schema: &SchemaRef,
    drop: &std::collections::HashMap<u64, u64>,
    mut rejects: Option<&mut Rejects>,
    key_names: &str,
    temp_dir: &Path,
) -> Result<(tempfile::TempPath, u64)> {
    let out = tempfile::Builder::new()
        .prefix("stage-")
        .suffix(".arrow")
        .tempfile_in(temp_dir)
        .map_err(|source| Error::Io { path: temp_dir.to_path_buf(), source })?;
    let out_path = out.path().to_path_buf();
    let mut writer = FileWriter::try_new(
        BufWriter::new(out.reopen().map_err(|source| Error::Io { path: out_path, source })?),
        schema,
    )?;
    let reader = FileReader::try_new(BufReader::new(open(file)?), None)?;
    let row_index = schema.fields().len() - 1;
    let mut dropped = 0;
    let seen: HashSet<u64> = drop.keys().copied().collect();
    for batch in reader {
        let batch = batch?;
        let numbers = batch.column(row_index).as_primitive::<arrow::datatypes::UInt64Type>();
        let keep: arrow::array::BooleanArray =
            numbers.iter().map(|n| Some(!n.is_some_and(|n| seen.contains(&n)))).collect();
        for i in (0..batch.num_rows()).filter(|i| !keep.value(*i)) {
            dropped += 1;
            if let Some(rj) = rejects.as_deref_mut() {
                let mut values = serde_json::Map::new();
                for (fi, f) in schema.fields().iter().enumerate().take(row_index) {
                    let v = display(batch.column(fi).as_ref(), i);
                    values
                        .insert(f.name().clone(), v.map(serde_json::Value::String).unwrap_or(serde_json::Value::Null));
                }
                let row = numbers.value(i);
                let first = drop.get(&row).copied().unwrap_or_default();
                rj.write(
                    row,
                    &[(Some(key_names.to_string()), format!("duplicate primary key: row {first} has the same key"))],
                    values,
                )?;
            }
        }
        writer.write(&filter_record_batch(&batch, &keep)?)?;
    }
    writer.finish()?;
    Ok((out.into_temp_path(), dropped))
}
