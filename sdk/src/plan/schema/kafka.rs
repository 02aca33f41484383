//! Schemas of `kind: kafka` nodes: the source's columns (the declared JSON
//! fields or one binary `value`, then the metadata columns), and the sink's
//! column checks (`key`, the `raw` value).

use super::{field_data_type, invalid};
use crate::error::ApiError;
use crate::spec::{KafkaFormat, KafkaMetadata, KafkaSinkSpec, KafkaSourceSpec, NodeSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// The column of a `raw` source, and the one a `raw` sink writes.
pub const RAW_VALUE: &str = "value";

/// The output of a source: JSON fields are nullable (a record may leave one
/// out), then the metadata columns in the order listed.
pub fn source_schema(spec: &KafkaSourceSpec) -> SchemaRef {
    let mut fields: Vec<Field> = match spec.format {
        KafkaFormat::Json => spec
            .schema
            .iter()
            .map(|f| Field::new(f.name.clone(), field_data_type(f.data_type), true))
            .collect(),
        KafkaFormat::Raw => vec![Field::new(RAW_VALUE, DataType::Binary, true)],
    };
    for m in &spec.metadata {
        let (data_type, nullable) = match m {
            KafkaMetadata::Key => (DataType::Utf8, true),
            KafkaMetadata::Headers => (DataType::Utf8, false),
            KafkaMetadata::Timestamp => (DataType::Timestamp(TimeUnit::Millisecond, None), true),
            KafkaMetadata::Topic => (DataType::Utf8, false),
            KafkaMetadata::Partition | KafkaMetadata::Offset => (DataType::Int64, false),
        };
        fields.push(Field::new(m.column(), data_type, nullable));
    }
    Arc::new(Schema::new(fields))
}

fn bytes_like(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary
    )
}

/// The sink's columns exist and fit its format.
pub(super) fn check_sink(
    node: &NodeSpec,
    spec: &KafkaSinkSpec,
    input: &SchemaRef,
) -> Result<(), ApiError> {
    for k in &spec.key {
        let field = input.field_with_name(k).map_err(|_| {
            invalid(
                node,
                "key",
                format!(
                    "key column `{k}` is not in the input (columns: {})",
                    names(input)
                ),
            )
        })?;
        if spec.format == KafkaFormat::Raw && !bytes_like(field.data_type()) {
            return Err(invalid(
                node,
                "key",
                format!(
                    "with format raw the key column must be utf8 or binary, `{k}` is {}",
                    field.data_type()
                ),
            ));
        }
    }
    if spec.format == KafkaFormat::Raw {
        let value = input.field_with_name(RAW_VALUE).map_err(|_| {
            invalid(
                node,
                "format",
                format!(
                    "format raw writes the column `{RAW_VALUE}`, which is not in the input (columns: {})",
                    names(input)
                ),
            )
        })?;
        if !bytes_like(value.data_type()) {
            return Err(invalid(
                node,
                "format",
                format!(
                    "format raw needs `{RAW_VALUE}` to be utf8 or binary, it is {}",
                    value.data_type()
                ),
            ));
        }
    }
    Ok(())
}

fn names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
