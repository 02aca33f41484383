//! `kind: kafka`: the source ([`source`]) and the sink ([`sink`]) on
//! librdkafka (rdkafka).
//!
//! Both do their blocking Kafka calls off the slot thread (ADR 0002): the
//! source's metadata and offset lookups on its discovery thread, the
//! exactly-once sink's transactions on its committer thread ([`txn`]). What
//! remains on the slot thread never waits on the network, except the
//! at-least-once sink's flush at a barrier, which is what that guarantee is.
//! The exactly-once protocol is ADR 0010.

pub mod assign;
pub mod decode;
mod direct;
mod discovery;
pub mod metrics;
mod records;
pub mod sink;
pub mod source;
mod txn;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::OperatorError;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;

/// A client configuration: the servers, then the user's properties.
pub(crate) fn client_config(servers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers);
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Kafka failed: a connector failure (a restart may help).
pub(crate) fn connector_error(
    node: &NodeId,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> OperatorError {
    OperatorError::new(
        FailureClass::Connector,
        format!("kafka node `{node}`: {what}"),
    )
    .with_source(e)
}

/// Produces `record`; while librdkafka's local queue is full (the broker is
/// slower than the job), serves delivery reports and tries again, which is
/// how a sink backpressures its job.
pub(crate) fn send<C: rdkafka::producer::ProducerContext>(
    producer: &rdkafka::producer::BaseProducer<C>,
    mut record: rdkafka::producer::BaseRecord<'_, [u8], [u8], C::DeliveryOpaque>,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                producer.poll(std::time::Duration::from_millis(10));
                record = back;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// How many partitions `topic` has; an error when it has none (it does not
/// exist).
pub(crate) fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<i32, rdkafka::error::KafkaError> {
    let md = client.fetch_metadata(Some(topic), std::time::Duration::from_secs(30))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if n == 0 {
        return Err(rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::error::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    Ok(n)
}

/// Reads an event-time column (timestamp ms or int64 ms) row by row.
pub(crate) fn event_time_millis(col: &ArrayRef) -> Option<impl Fn(usize) -> Option<i64> + '_> {
    let int64 = match col.data_type() {
        DataType::Int64 => true,
        DataType::Timestamp(TimeUnit::Millisecond, _) => false,
        _ => return None,
    };
    Some(move |row: usize| {
        if col.is_null(row) {
            None
        } else if int64 {
            Some(col.as_primitive::<Int64Type>().value(row))
        } else {
            Some(col.as_primitive::<TimestampMillisecondType>().value(row))
        }
    })
}

#[cfg(test)]
mod mock_tests;
