//! SQL expressions of `project` and `filter` nodes, compiled with DataFusion.
//!
//! The pipeline is DataFusion's own, minus the relational parts: parse the
//! text with `sqlparser`, plan it into a logical [`Expr`] against the input
//! schema (scalar functions come from `datafusion-functions`), apply type
//! coercion (so `amount >= 50` compares a Float64 with an Int64 literal),
//! simplify (some functions, e.g. `coalesce`, only run once rewritten), and
//! build a [`PhysicalExpr`] that evaluates a whole `RecordBatch` at a time.
//!
//! Naming decisions (users see them as column names):
//! - identifiers are case-sensitive and matched exactly against column names
//!   (no lower-casing of unquoted identifiers, unlike DataFusion's default);
//!   function names are case-insensitive;
//! - an item without `AS` is named after its column when it is a bare column
//!   reference, and otherwise after its SQL text as written (`id % 10`);
//! - string casts produce `Utf8`, not `Utf8View`, so strings keep one type
//!   through the graph.
//!
//! Functions that read the clock of a *query* (`now()`, `current_date`, …)
//! are rejected: a streaming job has no query start time and freezing the
//! deploy time into the job would be silently wrong.
//!
//! This module never panics on user input: parse errors, planning errors and
//! (defensively) panics inside DataFusion all become an [`Error`].

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion_common::config::ConfigOptions;
use datafusion_common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion_common::{DFSchema, DataFusionError, SchemaError, TableReference};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{AggregateUDF, Expr, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion_optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
/// Re-exported so users of compiled expressions need no DataFusion dependency.
pub use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_expr::create_physical_expr;
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::{self as sql, Visit, Visitor};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use datafusion_sql::sqlparser::tokenizer::Token;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock};

/// Longest expression text accepted. Expressions are one-liners; the bound
/// keeps the recursive planner far from the stack limit of a worker thread.
pub const MAX_EXPR_LEN: usize = 8 * 1024;
/// Deepest expression tree accepted, for the same reason.
pub const MAX_EXPR_DEPTH: usize = 128;

/// Why an expression does not compile or evaluate. Messages name the
/// expression as the user wrote it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("cannot parse `{expr}`: {message}")]
    Syntax { expr: String, message: String },
    #[error("unknown column `{column}` in `{expr}`; available columns: {available}")]
    UnknownColumn {
        expr: String,
        column: String,
        available: String,
    },
    #[error("invalid expression `{expr}`: {message}")]
    Invalid { expr: String, message: String },
    #[error("predicate `{expr}` is of type {data_type}, not boolean")]
    NotBoolean { expr: String, data_type: DataType },
    #[error("duplicate output column `{name}` (from `{expr}`); name it with `AS`")]
    DuplicateName { expr: String, name: String },
    #[error("a projection needs at least one expression")]
    EmptyProjection,
    #[error("evaluating `{expr}` failed: {message}")]
    Eval { expr: String, message: String },
}

pub type ExprError = Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Compiles `project` items (`expr [AS alias]`) against `input`. Returns one
/// physical expression per item and the output schema.
pub fn compile_projection(
    input: &SchemaRef,
    exprs: &[String],
) -> Result<(Vec<Arc<dyn PhysicalExpr>>, SchemaRef)> {
    if exprs.is_empty() {
        return Err(Error::EmptyProjection);
    }
    let df_schema = df_schema(input)?;
    let mut compiled = Vec::with_capacity(exprs.len());
    let mut fields = Vec::with_capacity(exprs.len());
    let mut names = HashSet::with_capacity(exprs.len());
    for text in exprs {
        let (ast, name) = parse_item(text)?;
        let physical = guarded(text, || plan(text, ast, &df_schema))?;
        let field = physical
            .return_field(input)
            .map_err(|e| invalid(text, &e))?;
        if !names.insert(name.clone()) {
            return Err(Error::DuplicateName {
                expr: text.clone(),
                name,
            });
        }
        fields.push(Field::new(
            name,
            field.data_type().clone(),
            field.is_nullable(),
        ));
        compiled.push(physical);
    }
    Ok((compiled, Arc::new(Schema::new(fields))))
}

/// Compiles a `filter` predicate against `input`; it must be boolean.
pub fn compile_predicate(input: &SchemaRef, predicate: &str) -> Result<Arc<dyn PhysicalExpr>> {
    let df_schema = df_schema(input)?;
    let ast = parse_expr(predicate)?;
    let physical = guarded(predicate, || plan(predicate, ast, &df_schema))?;
    let data_type = physical
        .data_type(input)
        .map_err(|e| invalid(predicate, &e))?;
    if data_type != DataType::Boolean && data_type != DataType::Null {
        return Err(Error::NotBoolean {
            expr: predicate.to_string(),
            data_type,
        });
    }
    Ok(physical)
}

/// Evaluates a compiled expression over a batch into an array of the batch's
/// length (a constant expression is broadcast).
pub fn evaluate(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    let eval_err = |e: DataFusionError| Error::Eval {
        expr: expr.to_string(),
        message: df_message(&e),
    };
    expr.evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(eval_err)
}

fn df_schema(input: &SchemaRef) -> Result<DFSchema> {
    DFSchema::try_from(input.as_ref().clone()).map_err(|e| Error::Invalid {
        expr: String::new(),
        message: df_message(&e),
    })
}

fn parser(text: &str) -> Result<Parser<'static>> {
    static DIALECT: GenericDialect = GenericDialect {};
    if text.len() > MAX_EXPR_LEN {
        return Err(syntax(
            text,
            format!("expression is longer than {MAX_EXPR_LEN} bytes"),
        ));
    }
    Parser::new(&DIALECT)
        .try_with_sql(text)
        .map_err(|e| syntax(text, e.to_string()))
}

/// Parses `expr [AS alias]` and names the output column.
fn parse_item(text: &str) -> Result<(sql::Expr, String)> {
    let mut p = parser(text)?;
    let item = p
        .parse_select_item()
        .map_err(|e| syntax(text, e.to_string()))?;
    expect_end(text, &p)?;
    let (expr, name) = match item {
        sql::SelectItem::ExprWithAlias { expr, alias } => (expr, alias.value),
        sql::SelectItem::UnnamedExpr(expr) => {
            let name = match &expr {
                sql::Expr::Identifier(ident) => ident.value.clone(),
                other => other.to_string(),
            };
            (expr, name)
        }
        sql::SelectItem::ExprWithAliases { .. } => {
            return Err(syntax(
                text,
                "an item has one name; write `expr AS name`".to_string(),
            ));
        }
        sql::SelectItem::Wildcard(_) | sql::SelectItem::QualifiedWildcard(..) => {
            return Err(syntax(
                text,
                "`*` is not supported; list the columns".to_string(),
            ));
        }
    };
    check_depth(text, &expr)?;
    Ok((expr, name))
}

fn parse_expr(text: &str) -> Result<sql::Expr> {
    let mut p = parser(text)?;
    let expr = p.parse_expr().map_err(|e| syntax(text, e.to_string()))?;
    expect_end(text, &p)?;
    check_depth(text, &expr)?;
    Ok(expr)
}

fn expect_end(text: &str, p: &Parser<'_>) -> Result<()> {
    match p.peek_token().token {
        Token::EOF => Ok(()),
        tok => Err(syntax(
            text,
            format!("unexpected `{tok}` after the expression"),
        )),
    }
}

fn check_depth(text: &str, expr: &sql::Expr) -> Result<()> {
    struct Depth {
        now: usize,
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &sql::Expr) -> ControlFlow<()> {
            self.now += 1;
            if self.now > MAX_EXPR_DEPTH {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn post_visit_expr(&mut self, _: &sql::Expr) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    match expr.visit(&mut Depth { now: 0 }) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(syntax(
            text,
            format!("expression nests deeper than {MAX_EXPR_DEPTH} levels"),
        )),
    }
}

/// Runs DataFusion planning, turning a panic inside it into an error: user
/// text must never take a JobManager or TaskManager down.
fn guarded<T>(text: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Invalid {
            expr: text.to_string(),
            message: "the sql planner failed on this expression".into(),
        })
    })
}

/// Logical planning, coercion, simplification and physical planning.
fn plan(text: &str, ast: sql::Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    let provider = &*FUNCTIONS;
    let mut options = ParserOptions::new();
    options.enable_ident_normalization = false;
    options.map_string_types_to_utf8view = false;
    options.parse_float_as_decimal = false;
    let planner = SqlToRel::new_with_options(provider, options);
    let logical = planner
        .sql_to_expr(ast, schema, &mut PlannerContext::new())
        .map_err(|e| map_plan_error(text, schema, &e))?;
    reject_query_clock(text, &logical)?;
    let coerced = logical
        .rewrite(&mut TypeCoercionRewriter::new(schema))
        .map_err(|e| map_plan_error(text, schema, &e))?
        .data;
    let context = SimplifyContext::builder()
        .with_schema(Arc::new(schema.clone()))
        .build();
    let simplified = ExprSimplifier::new(context)
        .simplify(coerced)
        .map_err(|e| invalid(text, &e))?;
    create_physical_expr(
        &simplified,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .map_err(|e| map_plan_error(text, schema, &e))
}

fn reject_query_clock(text: &str, expr: &Expr) -> Result<()> {
    const QUERY_CLOCK: &[&str] = &["now", "current_date", "current_time"];
    let mut found = None;
    let _ = expr.apply(|e| {
        if let Expr::ScalarFunction(f) = e
            && QUERY_CLOCK.contains(&f.func.name())
        {
            found = Some(f.func.name().to_string());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    match found {
        None => Ok(()),
        Some(name) => Err(Error::Invalid {
            expr: text.to_string(),
            message: format!(
                "`{name}()` reads a query start time, which a streaming job does not have"
            ),
        }),
    }
}

fn map_plan_error(text: &str, schema: &DFSchema, e: &DataFusionError) -> Error {
    if let DataFusionError::SchemaError(inner, _) = e.find_root()
        && let SchemaError::FieldNotFound { field, .. } = inner.as_ref()
    {
        let available = schema
            .fields()
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect::<Vec<_>>()
            .join(", ");
        return Error::UnknownColumn {
            expr: text.to_string(),
            column: field.name().to_string(),
            available,
        };
    }
    invalid(text, e)
}

fn invalid(text: &str, e: &DataFusionError) -> Error {
    Error::Invalid {
        expr: text.to_string(),
        message: df_message(e),
    }
}

fn syntax(text: &str, message: String) -> Error {
    Error::Syntax {
        expr: text.to_string(),
        message: lowercase_first(&message),
    }
}

/// DataFusion's message without its error-kind prefix or backtrace, in the
/// lowercase style of Eddy's messages.
fn df_message(e: &DataFusionError) -> String {
    let root = e.find_root();
    let msg = root.message();
    let first_line = msg.lines().next().unwrap_or_default().trim_end_matches('.');
    lowercase_first(first_line)
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The function catalog the SQL planner sees: DataFusion's default scalar
/// functions and the planners for special syntax (`EXTRACT`, `POSITION`,
/// `SUBSTRING`, struct literals). No tables, aggregates or window functions:
/// those are node kinds, not expressions.
struct Functions {
    scalar: HashMap<String, Arc<ScalarUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

static FUNCTIONS: LazyLock<Functions> = LazyLock::new(|| {
    let mut scalar = HashMap::new();
    for udf in datafusion_functions::all_default_functions() {
        for alias in udf.aliases() {
            scalar.insert(alias.clone(), Arc::clone(&udf));
        }
        scalar.insert(udf.name().to_string(), udf);
    }
    let planners: Vec<Arc<dyn ExprPlanner>> = vec![
        Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
        Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
        Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
    ];
    Functions {
        scalar,
        planners,
        options: ConfigOptions::default(),
    }
});

impl ContextProvider for Functions {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        Err(DataFusionError::Plan(format!(
            "expressions cannot read tables (`{name}`)"
        )))
    }
    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.scalar.get(name).cloned()
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.scalar.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
#[path = "expr_tests.rs"]
mod tests;
