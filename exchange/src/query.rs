//! Governed SQL: a DataFusion session per request that holds only governed
//! tables, one per dataset the caller may read.
//!
//! A [`GovernedTable`] applies the caller's row filters and masks inside its
//! own scan ([`GovernedExec`]): the caller's SQL is planned above it, so its
//! predicates, joins and errors only ever see rows the filters let through
//! and values as masked. No caller filter is pushed beneath it (the table
//! declares none supported, and the exec node accepts none), and nothing
//! else exists in the session: no files, no URL tables, no DDL, DML or `SET`.

use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use gdx_policies::filter::Reader;
use gdx_policies::{AccessPlan, HashKey, Mask};

/// A dataset as one reader may see it.
#[derive(Debug)]
pub struct GovernedTable {
    label: String,
    inner: Arc<dyn TableProvider>,
    plan: AccessPlan,
    filter: Option<Expr>,
    key: Arc<HashKey>,
    schema: SchemaRef,
}

impl GovernedTable {
    /// The governed view of `inner` (the dataset's Delta table) under `plan`,
    /// with the row filters bound for `reader`.
    pub fn try_new(
        label: &str,
        inner: Arc<dyn TableProvider>,
        plan: AccessPlan,
        reader: &Reader,
        columns: &[String],
        key: Arc<HashKey>,
        state: &datafusion::execution::SessionState,
    ) -> DfResult<Self> {
        let inner_schema = inner.schema();
        let df_schema = DFSchema::try_from(inner_schema.as_ref().clone())?;
        let filter = row_filter(label, &plan, reader, columns, state, &df_schema)?;
        let fields: Vec<Field> = plan
            .columns
            .iter()
            .map(|c| {
                let f = inner_schema.field_with_name(&c.name)?;
                Ok(Field::new(&c.name, c.mask.output_type(f.data_type()), true))
            })
            .collect::<DfResult<_>>()?;
        Ok(Self { label: label.to_string(), inner, plan, filter, key, schema: Arc::new(Schema::new(fields)) })
    }
}

/// The row filters of `plan` bound for `reader`, ANDed, as an expression over `schema`.
pub fn row_filter(
    label: &str,
    plan: &AccessPlan,
    reader: &Reader,
    columns: &[String],
    state: &datafusion::execution::SessionState,
    schema: &DFSchema,
) -> DfResult<Option<Expr>> {
    let mut filter: Option<Expr> = None;
    for template in &plan.row_filters {
        let parsed = gdx_policies::filter::parse(template, columns)
            .map_err(|e| DataFusionError::Plan(format!("row filter of {label}: {e}")))?;
        let sql = datafusion::sql::sqlparser::ast::ExprWithAlias { expr: parsed.bind(reader), alias: None };
        let expr = state.create_logical_expr_from_sql_expr(sql, schema)?;
        filter = Some(match filter {
            Some(f) => f.and(expr),
            None => expr,
        });
    }
    Ok(filter)
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Caller filters that are leakproof (see [`leakproof`]) reach the
    /// inner scan to prune files and row groups; all of them are also
    /// evaluated above the governed scan (`Inexact`), on governed rows.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        use datafusion::logical_expr::TableProviderFilterPushDown as P;
        Ok(filters.iter().map(|f| if self.leakproof(f) { P::Inexact } else { P::Unsupported }).collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        // The inner scan reads the wanted columns and those the filter needs, in clear.
        let inner_schema = self.inner.schema();
        let mut needed: Vec<usize> = Vec::new();
        let mut need = |name: &str| -> DfResult<usize> {
            let i = inner_schema.index_of(name)?;
            Ok(match needed.iter().position(|n| *n == i) {
                Some(p) => p,
                None => {
                    needed.push(i);
                    needed.len() - 1
                }
            })
        };
        let mut outputs = Vec::with_capacity(wanted.len());
        for w in &wanted {
            let column = &self.plan.columns[*w];
            outputs.push((need(&column.name)?, column.mask));
        }
        if let Some(f) = &self.filter {
            for c in f.column_refs() {
                need(&c.name)?;
            }
        }
        // Only leakproof caller filters go beneath (they cannot fail, call out
        // or show anything: they only prune); the limit stays above.
        let pruning: Vec<Expr> = filters.iter().filter(|f| self.leakproof(f)).cloned().collect();
        let mut input = self.inner.scan(state, Some(&needed), &pruning, None).await?;
        // The planner does not see beneath the governed scan, so the session's
        // physical optimizer runs on the inner scan here: it splits the files
        // into as many partitions as the session has (without it the scan, and
        // the masks, would run on one core).
        if let Some(session) = state.as_any().downcast_ref::<datafusion::execution::SessionState>() {
            for rule in session.physical_optimizers() {
                input = rule.optimize(input, session.config_options())?;
            }
        }
        let filter = match &self.filter {
            Some(f) => {
                let df_schema = DFSchema::try_from(input.schema().as_ref().clone())?;
                Some(state.create_physical_expr(f.clone(), &df_schema)?)
            }
            None => None,
        };
        let schema = Arc::new(self.schema.project(&wanted)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(input.properties().output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let label = self.label.clone();
        Ok(Arc::new(GovernedExec { label, input, filter, outputs, schema, key: self.key.clone(), properties }))
    }
}

impl GovernedTable {
    /// Whether a caller's filter may run beneath the governed scan: AND of
    /// comparisons, `IN` lists, `BETWEEN` and `IS [NOT] NULL` of columns the
    /// caller sees in clear against literals — nothing that can fail on a
    /// value (no casts, no functions, no arithmetic), call out, or depend on
    /// a masked value.
    fn leakproof(&self, expr: &Expr) -> bool {
        use datafusion::logical_expr::{BinaryExpr, Operator};
        let clear = |e: &Expr| match e {
            Expr::Column(c) => self.plan.mask_of(&c.name) == Some(Mask::None),
            _ => false,
        };
        let literal = |e: &Expr| matches!(e, Expr::Literal(..));
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                self.leakproof(left) && self.leakproof(right)
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                matches!(
                    op,
                    Operator::Eq | Operator::NotEq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq
                ) && ((clear(left) && literal(right)) || (literal(left) && clear(right)))
            }
            Expr::InList(l) => clear(&l.expr) && l.list.iter().all(literal),
            Expr::Between(b) => clear(&b.expr) && literal(&b.low) && literal(&b.high),
            Expr::IsNull(e) | Expr::IsNotNull(e) => clear(e),
            _ => false,
        }
    }
}

/// Applies a row filter and masks to its input's batches.
#[derive(Debug)]
pub struct GovernedExec {
    label: String,
    input: Arc<dyn ExecutionPlan>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    outputs: Vec<(usize, Mask)>,
    schema: SchemaRef,
    key: Arc<HashKey>,
    properties: Arc<PlanProperties>,
}

impl DisplayAs for GovernedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The filter and masks are not shown: EXPLAIN names the governed scan only.
        write!(f, "GovernedScan: {}", self.label)
    }
}

/// Applies a row filter and masks to a batch: the rows the filter keeps, the
/// `outputs` columns (by index in `batch`) masked, as `schema`.
pub fn govern(
    batch: RecordBatch,
    filter: Option<&Arc<dyn PhysicalExpr>>,
    outputs: &[(usize, Mask)],
    schema: &SchemaRef,
    key: &HashKey,
) -> DfResult<RecordBatch> {
    let batch = match filter {
        Some(f) => {
            let keep = f.evaluate(&batch)?.into_array(batch.num_rows())?;
            let keep =
                keep.as_boolean_opt().ok_or_else(|| DataFusionError::Plan("a row filter is not a predicate".into()))?;
            arrow::compute::filter_record_batch(&batch, keep)?
        }
        None => batch,
    };
    let columns = outputs
        .iter()
        .map(|(i, mask)| gdx_policies::masks::apply(*mask, batch.column(*i), key))
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?)
}

impl ExecutionPlan for GovernedExec {
    fn name(&self) -> &str {
        "GovernedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// None, to the planner: the scan beneath is fixed when the governed
    /// table builds it, no optimizer rule reaches across, and `EXPLAIN`
    /// shows the governed scan only (not the files, filter or masks).
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
            Err(DataFusionError::Internal("a governed scan has no children".into()))
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let (filter, outputs, schema, key) =
            (self.filter.clone(), self.outputs.clone(), self.schema.clone(), self.key.clone());
        let stream = input.map(move |batch| govern(batch?, filter.as_ref(), &outputs, &schema, &key));
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// A fresh session for one request: information schema on (it lists only
/// what is registered), no URL tables, a memory limit past which sorts and
/// aggregations spill to `spill_dir` (the server's own temporary folder,
/// emptied at start) and the rest fails with `resources_exhausted`.
pub fn session(memory_limit: usize, spill_dir: &std::path::Path) -> DfResult<SessionContext> {
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("gdx", "public")
        .with_create_default_catalog_and_schema(true)
        .with_target_partitions(2);
    let disk = datafusion::execution::disk_manager::DiskManagerBuilder::default()
        .with_mode(datafusion::execution::disk_manager::DiskManagerMode::Directories(vec![spill_dir.to_path_buf()]));
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit, 1.0)
        .with_disk_manager_builder(disk)
        .build_arc()?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Registers a table as `{schema}.{name}`: a governed dataset under its
/// department, or the audit log as `gdx.audit`.
pub fn register(
    ctx: &SessionContext,
    department: &str,
    name: &str,
    table: Arc<dyn datafusion::catalog::TableProvider>,
) -> DfResult<()> {
    let catalog = ctx.catalog("gdx").ok_or_else(|| DataFusionError::Internal("no gdx catalog".into()))?;
    let schema = match catalog.schema(department) {
        Some(s) => s,
        None => {
            let s: Arc<dyn datafusion::catalog::SchemaProvider> = Arc::new(MemorySchemaProvider::new());
            catalog.register_schema(department, s.clone())?;
            s
        }
    };
    schema.register_table(name.to_string(), table)?;
    Ok(())
}

/// Why a statement may not run: anything but a query (or EXPLAIN of one).
pub fn refuse_statement(sql: &str) -> Option<String> {
    use datafusion::sql::parser::{DFParser, Statement as DfStatement};
    use datafusion::sql::sqlparser::ast::Statement;
    let statements = match DFParser::parse_sql(sql) {
        Ok(s) => s,
        Err(_) => return None, // the planner reports syntax errors with their position
    };
    if statements.len() != 1 {
        return Some("exactly one statement per query".into());
    }
    let allowed = match &statements[0] {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) | Statement::ShowTables { .. } | Statement::ShowColumns { .. } => true,
            Statement::Explain { statement, .. } => matches!(statement.as_ref(), Statement::Query(_)),
            _ => false,
        },
        DfStatement::Explain(e) => {
            matches!(e.statement.as_ref(), DfStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)))
        }
        _ => false,
    };
    (!allowed)
        .then(|| "only queries (SELECT, WITH, VALUES), SHOW TABLES, SHOW COLUMNS and EXPLAIN of a query may run".into())
}

/// Plans and starts `df`. Joins without an equality condition (cross and
/// nested-loop joins) may emit batch after batch without ever waiting on
/// their inputs, so nothing would give the task back to the runtime: the
/// query could neither be stopped by its deadline nor by a client going
/// away, and it would hold a worker of the server. Each such join is wrapped
/// so that it spends the task's cooperative budget and yields when it is
/// spent; dropping the stream then stops the query.
pub async fn execute(df: datafusion::dataframe::DataFrame) -> DfResult<SendableRecordBatchStream> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::joins::{CrossJoinExec, NestedLoopJoinExec};
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let plan = plan
        .transform_up(|node| {
            Ok(if node.is::<CrossJoinExec>() || node.is::<NestedLoopJoinExec>() {
                Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>)
            } else {
                Transformed::no(node)
            })
        })?
        .data;
    datafusion::physical_plan::execute_stream(plan, task)
}
