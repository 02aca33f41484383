//! Column pruning before a shuffle: a node whose every consumer is a window
//! or an `aggregate` sends only the columns those read (their keys, event
//! time and aggregate inputs). Their output holds nothing else, so the other
//! columns would cross the network only to be dropped. Nexmark q5/q11/q12
//! shuffle two of the bid's seven columns instead of all of them.
//!
//! Producer and consumer derive the pruned schema from the spec with the same
//! function, so both sides agree without the graph carrying it.

use super::plan_error;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::{Collector, Operator, OperatorError};
use eddy_sdk::spec::{JobSpec, NodeKind};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The columns the consumers of `node` read, when it has consumers and all
/// of them are windows or aggregates; `None` when some consumer may read
/// every column.
fn consumed_columns(spec: &JobSpec, node: &NodeId) -> Option<BTreeSet<String>> {
    let mut columns = BTreeSet::new();
    let mut consumers = 0;
    for n in spec.nodes.iter().filter(|n| n.input.as_ref() == Some(node)) {
        let (key_by, aggregates) = match &n.kind {
            NodeKind::Window(w) => {
                columns.insert(w.event_time.column.clone());
                (&w.key_by, &w.aggregates)
            }
            NodeKind::Aggregate(a) => (&a.key_by, &a.aggregates),
            _ => return None,
        };
        consumers += 1;
        columns.extend(key_by.iter().cloned());
        columns.extend(aggregates.iter().filter_map(|a| a.column.clone()));
    }
    (consumers > 0).then_some(columns)
}

/// The indices (in schema order) and schema of what `node` sends downstream,
/// when pruning drops at least one of the columns of `schema`.
pub(crate) fn pruned(
    spec: &JobSpec,
    node: &NodeId,
    schema: &SchemaRef,
) -> Result<Option<(Vec<usize>, SchemaRef)>, OperatorError> {
    let Some(columns) = consumed_columns(spec, node) else {
        return Ok(None);
    };
    let indices: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| columns.contains(schema.field(i).name()))
        .collect();
    if indices.len() != columns.len() {
        return Err(plan_error(format!(
            "the consumers of `{node}` read columns it does not have: {:?}",
            columns
                .iter()
                .filter(|c| schema.index_of(c).is_err())
                .collect::<Vec<_>>()
        )));
    }
    if indices.len() == schema.fields().len() {
        return Ok(None);
    }
    let projected = schema
        .project(&indices)
        .map_err(|e| plan_error(format!("cannot prune the output of `{node}`: {e}")))?;
    Ok(Some((indices, Arc::new(projected))))
}

/// The schema `node`'s consumers receive: pruned, or its own.
pub(crate) fn sent_schema(
    spec: &JobSpec,
    node: &NodeId,
    schema: SchemaRef,
) -> Result<SchemaRef, OperatorError> {
    Ok(pruned(spec, node, &schema)?.map_or(schema, |(_, s)| s))
}

/// Keeps the consumed columns of every batch: no copy, the arrays are shared.
pub struct Prune {
    indices: Vec<usize>,
    schema: SchemaRef,
}

impl Prune {
    pub fn new(indices: Vec<usize>, schema: SchemaRef) -> Self {
        Prune { indices, schema }
    }
}

impl Operator for Prune {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        let columns = self
            .indices
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let pruned = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| plan_error(format!("pruned batch does not match its schema: {e}")))?;
        out.batch(pruned);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use eddy_sdk::spec::parse_yaml_or_json;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, false),
            Field::new("url", DataType::Utf8, false),
            Field::new("price", DataType::Int64, false),
            Field::new("ts", DataType::Int64, false),
        ]))
    }

    fn spec(consumers: &str) -> JobSpec {
        parse_yaml_or_json(&format!(
            "name: j\nparallelism: 1\nnodes:\n  - {{id: src, kind: nexmark, table: bid, count: 10}}\n{consumers}"
        ))
        .unwrap()
    }

    const WINDOW: &str = "  - {id: w, kind: window, input: src, key_by: [auction], event_time: {column: date_time, max_out_of_orderness: 0s}, window: {type: tumbling, size: 10s}, aggregates: [{fn: sum, column: price, as: total}]}\n  - {id: out, kind: blackhole, input: w}\n";

    #[test]
    fn prune_keeps_window_keys_event_time_and_aggregate_inputs() {
        let spec = spec(WINDOW);
        let cols = consumed_columns(&spec, &"src".into()).unwrap();
        assert_eq!(
            cols.into_iter().collect::<Vec<_>>(),
            ["auction", "date_time", "price"]
        );
        // Against a schema that names the event time `ts`, the window's
        // column is missing: a plan error, not a silent drop.
        assert!(pruned(&spec, &"src".into(), &schema()).is_err());
    }

    #[test]
    fn prune_keeps_what_windows_and_aggregates_read() {
        let agg = "  - {id: a, kind: aggregate, input: src, key_by: [bidder], aggregates: [{fn: count, as: n}, {fn: count, column: url, as: u}]}\n";
        let both = spec(&format!("{WINDOW}{agg}"));
        let cols = consumed_columns(&both, &"src".into()).unwrap();
        assert_eq!(
            cols.into_iter().collect::<Vec<_>>(),
            ["auction", "bidder", "date_time", "price", "url"]
        );
        let alone = spec(agg);
        let cols = consumed_columns(&alone, &"src".into()).unwrap();
        assert_eq!(cols.into_iter().collect::<Vec<_>>(), ["bidder", "url"]);
    }

    #[test]
    fn prune_not_applied_when_a_consumer_reads_everything() {
        let with_sink = format!("{WINDOW}  - {{id: raw, kind: blackhole, input: src}}\n");
        assert!(consumed_columns(&spec(&with_sink), &"src".into()).is_none());
        assert!(
            consumed_columns(&spec(WINDOW), &"out".into()).is_none(),
            "no consumers"
        );
    }

    #[test]
    fn prune_operator_shares_the_kept_arrays() {
        let s = schema();
        let projected = Arc::new(s.project(&[0, 3]).unwrap());
        let names: Vec<&str> = projected
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["auction", "ts"]);
        let batch = RecordBatch::try_new(
            s,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![10, 20])),
                Arc::new(Int64Array::from(vec![5, 6])),
            ],
        )
        .unwrap();
        let mut op = Prune::new(vec![0, 3], projected.clone());
        let mut out = Collector::new();
        op.on_batch(batch.clone(), &mut out).unwrap();
        let emitted: Vec<_> = out.drain().collect();
        let eddy_sdk::operator::Element::Batch(b) = &emitted[0] else {
            panic!("a batch")
        };
        assert_eq!(b.schema(), projected);
        assert!(Arc::ptr_eq(b.column(1), batch.column(3)), "no copy");
    }
}
