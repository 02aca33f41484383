//! `filter`: keeps the rows for which the node's SQL predicate is true (a
//! null result counts as false, as in SQL's `WHERE`).

use super::{bad_data, plan_error};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{Collector, Operator, OperatorError};
use eddy_sdk::plan::expr::{self, PhysicalExpr};
use std::sync::Arc;

pub struct Filter {
    node: NodeId,
    predicate: Arc<dyn PhysicalExpr>,
}

impl Filter {
    pub fn new(node: &NodeId, input: &SchemaRef, predicate: &str) -> Result<Self, OperatorError> {
        let predicate = expr::compile_predicate(input, predicate)
            .map_err(|e| plan_error(format!("node `{node}`: {e}")))?;
        Ok(Filter {
            node: node.clone(),
            predicate,
        })
    }
}

impl Operator for Filter {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        let mask = expr::evaluate(&self.predicate, &batch)
            .map_err(|e| bad_data(&self.node, "cannot evaluate the predicate", e))?;
        if mask.data_type() == &DataType::Null {
            return Ok(()); // `WHERE NULL` keeps nothing
        }
        let Some(mask) = mask.as_boolean_opt() else {
            return Err(plan_error(format!(
                "node `{}`: the predicate is not boolean",
                self.node
            )));
        };
        // `true_count` counts valid true values only, so nulls are false here
        // as in the `filter` kernel.
        match mask.true_count() {
            0 => {}
            n if n == batch.num_rows() => out.batch(batch),
            _ => out.batch(
                filter_record_batch(&batch, mask)
                    .map_err(|e| bad_data(&self.node, "cannot filter a batch", e))?,
            ),
        }
        Ok(())
    }
}
