//! `gdx.audit`: the audit log as a DataFusion table, for auditors' SQL.
//!
//! The scan streams: it reads pages of [`PAGE`] records by seq on a blocking
//! thread and yields one batch per page, so a query over the whole log never
//! holds it in memory. It sees the records the reader's [`Scope`] allows and
//! only those that existed when it started. Only the projected columns are
//! built. No filter is pushed down; DataFusion applies them above the scan.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, ListBuilder, RecordBatch, RecordBatchOptions, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt16Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use rusqlite::Connection;

use super::read::{Filter, Reader, Scope, select_records};
use super::{AuditError, Record, schema};

/// Records per page, and so per batch.
pub const PAGE: usize = 8192;

fn list_of_utf8() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// The columns of `gdx.audit`, in the order of the record's fields.
static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
        Field::new("principal", DataType::Utf8, true),
        Field::new("department", DataType::Utf8, true),
        Field::new("action", DataType::Utf8, false),
        Field::new("method", DataType::Utf8, true),
        Field::new("route", DataType::Utf8, true),
        Field::new("status", DataType::UInt16, true),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("datasets", list_of_utf8(), false),
        Field::new("versions", DataType::Utf8, true),
        Field::new("sql", DataType::Utf8, true),
        Field::new("rows", DataType::UInt64, true),
        Field::new("purpose", DataType::Utf8, true),
        Field::new("subjects", list_of_utf8(), false),
        Field::new("target", DataType::Utf8, true),
        Field::new("detail", DataType::Utf8, true),
    ]))
});

fn strings<'a>(records: &'a [Record], f: impl Fn(&'a Record) -> Option<&'a str>) -> ArrayRef {
    Arc::new(records.iter().map(f).collect::<StringArray>())
}

fn lists<'a>(records: &'a [Record], f: impl Fn(&'a Record) -> &'a [String]) -> ArrayRef {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for r in records {
        for v in f(r) {
            builder.values().append_value(v);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn versions_json(versions: &BTreeMap<String, i64>) -> Option<String> {
    (!versions.is_empty()).then(|| serde_json::to_string(versions).unwrap_or_default())
}

/// Column `i` of [`SCHEMA`] for `records`.
fn column(i: usize, records: &[Record]) -> DfResult<ArrayRef> {
    Ok(match i {
        0 => Arc::new(records.iter().map(|r| r.seq).collect::<UInt64Array>()),
        1 => Arc::new(
            TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.time.timestamp_micros()))
                .with_timezone("UTC"),
        ),
        2 => strings(records, |r| r.principal.as_deref()),
        3 => strings(records, |r| r.department.as_deref()),
        4 => strings(records, |r| Some(&r.action)),
        5 => strings(records, |r| r.method.as_deref()),
        6 => strings(records, |r| r.route.as_deref()),
        7 => Arc::new(records.iter().map(|r| r.status).collect::<UInt16Array>()),
        8 => strings(records, |r| Some(&r.outcome)),
        9 => lists(records, |r| &r.datasets),
        10 => Arc::new(records.iter().map(|r| versions_json(&r.versions)).collect::<StringArray>()),
        11 => strings(records, |r| r.sql.as_deref()),
        12 => Arc::new(records.iter().map(|r| r.rows).collect::<UInt64Array>()),
        13 => strings(records, |r| r.purpose.as_deref()),
        14 => lists(records, |r| &r.subjects),
        15 => strings(records, |r| r.target.as_deref()),
        16 => strings(records, |r| r.detail.as_deref()),
        _ => return Err(DataFusionError::Internal(format!("gdx.audit has no column {i}"))),
    })
}

/// The batch of `records` with the columns `projection` of [`SCHEMA`].
fn batch(records: &[Record], projection: &[usize], schema: &SchemaRef) -> DfResult<RecordBatch> {
    let columns = projection.iter().map(|i| column(*i, records)).collect::<DfResult<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(records.len()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

/// The audit log as a table, as one reader's scope allows.
#[derive(Debug)]
pub struct AuditTable {
    reader: Arc<Reader>,
    scope: Scope,
}

impl AuditTable {
    pub(super) fn new(reader: Arc<Reader>, scope: Scope) -> Self {
        Self { reader, scope }
    }

    /// The columns of the table.
    pub fn table_schema() -> SchemaRef {
        SCHEMA.clone()
    }
}

#[async_trait]
impl TableProvider for AuditTable {
    fn schema(&self) -> SchemaRef {
        SCHEMA.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..SCHEMA.fields().len()).collect(),
        };
        let schema = Arc::new(SCHEMA.project(&projection)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(AuditScanExec {
            reader: self.reader.clone(),
            scope: self.scope.clone(),
            projection,
            schema,
            limit,
            properties,
        }))
    }
}

/// The streaming scan of [`AuditTable`].
#[derive(Debug)]
pub struct AuditScanExec {
    reader: Arc<Reader>,
    scope: Scope,
    projection: Vec<usize>,
    schema: SchemaRef,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for AuditScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditScan")?;
        if let Some(limit) = self.limit {
            write!(f, ": limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for AuditScanExec {
    fn name(&self) -> &str {
        "AuditScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal("the audit scan has no children".into()))
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("the audit scan has one partition, not {partition}")));
        }
        let cursor = Cursor {
            reader: self.reader.clone(),
            scope: self.scope.clone(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            conn: None,
            after: 0,
            upto: 0,
            remaining: self.limit.unwrap_or(usize::MAX),
        };
        let stream = futures::stream::try_unfold(cursor, |cursor| async move {
            if cursor.remaining == 0 {
                return Ok(None);
            }
            let (result, cursor) = tokio::task::spawn_blocking(move || {
                let mut cursor = cursor;
                (cursor.next_page(), cursor)
            })
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok(result?.map(|batch| (batch, cursor)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// Where a scan is: its connection (opened on the first page) and the last seq read.
struct Cursor {
    reader: Arc<Reader>,
    scope: Scope,
    projection: Vec<usize>,
    schema: SchemaRef,
    conn: Option<Connection>,
    after: u64,
    /// The last record that existed when the scan started.
    upto: u64,
    remaining: usize,
}

impl Cursor {
    /// The next page as a batch, or `None` at the end.
    fn next_page(&mut self) -> DfResult<Option<RecordBatch>> {
        let external = |e: AuditError| DataFusionError::External(Box::new(e));
        let conn = match self.conn.take() {
            Some(c) => c,
            None => {
                let c = schema::open_reader(self.reader.path()).map_err(external)?;
                self.upto = c
                    .query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |r| r.get(0))
                    .map_err(|e| external(self.reader.read_error(e)))?;
                c
            }
        };
        let want = PAGE.min(self.remaining);
        let sql = select_records(&conn, &Filter::default(), &self.scope, self.after, Some(self.upto), want, false)
            .map_err(|e| external(self.reader.read_error(e)))?;
        let records = self.reader.records(&conn, &sql).map_err(external)?;
        self.conn = Some(conn);
        let Some((last, _)) = records.last() else { return Ok(None) };
        self.after = *last;
        self.remaining -= records.len();
        if records.len() < want {
            // A short page is the last one.
            self.remaining = 0;
        }
        let records: Vec<Record> = records.into_iter().map(|(_, r)| r).collect();
        batch(&records, &self.projection, &self.schema).map(Some)
    }
}
