//! The sink's direct modes: `delivery: none` produces and forgets (failed
//! deliveries are counted); `at_least_once` produces as batches arrive and,
//! at each barrier (and at the end of input), waits until the broker
//! acknowledged everything, failing if a record could not be delivered, so a
//! completed checkpoint never misses a record.

use super::metrics::{METRICS, NodeLabels};
use super::sink::Rec;
use super::{client_config, connector_error};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::OperatorError;
use eddy_sdk::spec::KafkaSinkSpec;
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long the at-least-once flush at a barrier may take.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Records produced as they come.
pub(super) struct Direct {
    producer: BaseProducer<DeliveryErrors>,
    errors: Arc<Errors>,
    reported: u64,
    at_least_once: bool,
    round_robin: Option<RoundRobin>,
}

#[derive(Default)]
struct RoundRobin {
    partitions: Option<i32>,
    next: i32,
}

#[derive(Default)]
struct Errors {
    count: AtomicU64,
    last: std::sync::Mutex<Option<KafkaError>>,
}

struct DeliveryErrors(Arc<Errors>);

impl ClientContext for DeliveryErrors {}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.0.count.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.0.last.lock() {
                *last = Some(e.clone());
            }
        }
    }
}

impl Direct {
    pub(super) fn create(
        node: &NodeId,
        spec: &KafkaSinkSpec,
        round_robin: bool,
        at_least_once: bool,
    ) -> Result<Self, OperatorError> {
        let mut config = client_config(&spec.bootstrap_servers, &spec.properties);
        if !round_robin {
            config.set("partitioner", "murmur2_random");
        }
        let errors = Arc::new(Errors::default());
        let producer = config
            .create_with_context(DeliveryErrors(Arc::clone(&errors)))
            .map_err(|e| connector_error(node, "cannot create the Kafka producer", e))?;
        Ok(Direct {
            producer,
            errors,
            reported: 0,
            at_least_once,
            round_robin: round_robin.then_some(RoundRobin::default()),
        })
    }

    pub(super) fn produce(
        &mut self,
        node: &NodeId,
        topic: &str,
        labels: &NodeLabels,
        records: Vec<Rec>,
    ) -> Result<(), OperatorError> {
        if let Some(rr) = &mut self.round_robin
            && rr.partitions.is_none()
        {
            let n = super::partition_count(self.producer.client(), topic).map_err(|e| {
                connector_error(node, &format!("cannot count the partitions of {topic}"), e)
            })?;
            rr.partitions = Some(n);
        }
        let mut bytes = 0u64;
        for r in &records {
            bytes += (r.value.len() + r.key.as_ref().map_or(0, Vec::len)) as u64;
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(topic).payload(r.value.as_slice());
            if let Some(k) = r.key.as_deref() {
                record = record.key(k);
            }
            if let Some(rr) = &mut self.round_robin
                && let Some(n) = rr.partitions
            {
                record = record.partition(rr.next % n);
                rr.next = (rr.next + 1) % n;
            }
            if let Err(e) = super::send(&self.producer, record) {
                METRICS.produce_errors.get_or_create(labels).inc();
                if self.at_least_once {
                    return Err(connector_error(node, "cannot produce a record", e));
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        METRICS
            .records_out
            .get_or_create(labels)
            .inc_by(records.len() as u64);
        METRICS.bytes_out.get_or_create(labels).inc_by(bytes);
        self.check_errors(node, labels)
    }

    fn check_errors(&mut self, node: &NodeId, labels: &NodeLabels) -> Result<(), OperatorError> {
        let count = self.errors.count.load(Ordering::Relaxed);
        if count > self.reported {
            METRICS
                .produce_errors
                .get_or_create(labels)
                .inc_by(count - self.reported);
            self.reported = count;
            if self.at_least_once {
                let last = self.errors.last.lock().ok().and_then(|mut l| l.take());
                let err = OperatorError::new(
                    FailureClass::Connector,
                    format!("kafka sink `{node}`: {count} records could not be delivered"),
                );
                return Err(match last {
                    Some(e) => err.with_source(e),
                    None => err,
                });
            }
        }
        Ok(())
    }

    /// At-least-once: everything before the barrier is acknowledged.
    pub(super) fn barrier(
        &mut self,
        node: &NodeId,
        labels: &NodeLabels,
    ) -> Result<(), OperatorError> {
        if self.at_least_once {
            self.producer.flush(FLUSH_TIMEOUT).map_err(|e| {
                connector_error(node, "cannot deliver the records before the barrier", e)
            })?;
        } else {
            self.producer.poll(Duration::ZERO);
        }
        self.check_errors(node, labels)
    }
}
