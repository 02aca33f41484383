//! The Arrow schema of each `nexmark` table: flat columns, ids and prices
//! `Int64`, times `Timestamp(Millisecond)`, text `Utf8`, none nullable. The
//! `nexmark` source builds its batches against exactly these schemas.

use crate::error::ApiError;
use crate::spec::{NexmarkSpec, NexmarkTable, NodeSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// The output schema of a `nexmark` node (after checking its fields).
pub fn nexmark_schema(node: &NodeSpec, spec: &NexmarkSpec) -> Result<SchemaRef, ApiError> {
    spec.validate(node.id.as_str())?;
    Ok(nexmark_table_schema(spec.table))
}

/// The schema of one Nexmark table, in the column order of the Nexmark SQL
/// tables.
pub fn nexmark_table_schema(table: NexmarkTable) -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
    let col = |name: &str, t: DataType| Field::new(name, t, false);
    let fields = match table {
        NexmarkTable::Person => vec![
            col("id", DataType::Int64),
            col("name", DataType::Utf8),
            col("email_address", DataType::Utf8),
            col("credit_card", DataType::Utf8),
            col("city", DataType::Utf8),
            col("state", DataType::Utf8),
            col("date_time", ts()),
            col("extra", DataType::Utf8),
        ],
        NexmarkTable::Auction => vec![
            col("id", DataType::Int64),
            col("item_name", DataType::Utf8),
            col("description", DataType::Utf8),
            col("initial_bid", DataType::Int64),
            col("reserve", DataType::Int64),
            col("date_time", ts()),
            col("expires", ts()),
            col("seller", DataType::Int64),
            col("category", DataType::Int64),
            col("extra", DataType::Utf8),
        ],
        NexmarkTable::Bid => vec![
            col("auction", DataType::Int64),
            col("bidder", DataType::Int64),
            col("price", DataType::Int64),
            col("channel", DataType::Utf8),
            col("url", DataType::Utf8),
            col("date_time", ts()),
            col("extra", DataType::Utf8),
        ],
    };
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::plan::validate;
    use crate::spec::parse_yaml_or_json;

    #[test]
    fn nexmark_schema_each_table_has_its_columns() {
        let names = |t| {
            nexmark_table_schema(t)
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(
            names(NexmarkTable::Bid),
            "auction,bidder,price,channel,url,date_time,extra"
        );
        assert_eq!(
            names(NexmarkTable::Person),
            "id,name,email_address,credit_card,city,state,date_time,extra"
        );
        assert_eq!(
            names(NexmarkTable::Auction),
            "id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,extra"
        );
    }

    /// A nexmark source feeds SQL over its columns: q2's filter and projection
    /// type-check, and the output keeps the input types.
    #[test]
    fn nexmark_schema_q2_projection_types() {
        let spec = parse_yaml_or_json(
            "name: q2\nnodes:\n  - {id: bids, kind: nexmark, count: 1000}\n  \
             - {id: q2, kind: filter, input: bids, predicate: 'auction % 123 = 0'}\n  \
             - {id: p, kind: project, input: q2, exprs: [auction, price]}\n  \
             - {id: out, kind: blackhole, input: p}\n",
        )
        .unwrap();
        let (_, schemas) = validate(&spec, None).unwrap();
        let p = schemas.get(&NodeId::from("p")).unwrap();
        assert_eq!(p.field(0).data_type(), &DataType::Int64);
        assert_eq!(p.field(1).name(), "price");
        let bad = parse_yaml_or_json(
            "name: q\nnodes:\n  - {id: bids, kind: nexmark}\n  \
             - {id: p, kind: project, input: bids, exprs: [seller]}\n",
        )
        .unwrap();
        let e = validate(&bad, None).unwrap_err();
        assert_eq!(
            (e.node.as_deref(), e.field.as_deref()),
            (Some("p"), Some("exprs"))
        );
    }
}
