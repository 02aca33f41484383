//! `project`: evaluates the node's compiled SQL expressions on each batch.

use super::{bad_data, plan_error};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatchOptions;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{Collector, Operator, OperatorError};
use eddy_sdk::plan::expr::{self, PhysicalExpr};
use std::sync::Arc;

pub struct Project {
    node: NodeId,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl Project {
    pub fn new(node: &NodeId, input: &SchemaRef, exprs: &[String]) -> Result<Self, OperatorError> {
        let (exprs, schema) = expr::compile_projection(input, exprs)
            .map_err(|e| plan_error(format!("node `{node}`: {e}")))?;
        Ok(Project {
            node: node.clone(),
            exprs,
            schema,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }
}

impl Operator for Project {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        let columns = self
            .exprs
            .iter()
            .map(|e| expr::evaluate(e, &batch))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_data(&self.node, "cannot evaluate the projection", e))?;
        // The row count is explicit so a projection of constants keeps it.
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        let projected =
            RecordBatch::try_new_with_options(Arc::clone(&self.schema), columns, &options)
                .map_err(|e| bad_data(&self.node, "the projection does not match its schema", e))?;
        out.batch(projected);
        Ok(())
    }
}
