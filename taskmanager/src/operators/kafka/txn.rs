//! The exactly-once sink's committer thread (ADR 0010).
//!
//! The sink keeps each checkpoint interval's records in its checkpointed
//! state; once the checkpoint is committed, this thread writes them in one
//! Kafka transaction that also commits a *marker*: the offset `n` (the
//! checkpoint id) of partition 0 of the output topic for the consumer group
//! named after the transactional id. Records and marker become visible
//! together or not at all, so after any failure the marker says whether a
//! checkpoint's records are in Kafka: a restored buffer with an id above the
//! marker is written again, one at or below it is not.
//!
//! Before reading a marker the thread initialises the transactional id,
//! which fences any older producer with it (a zombie of the subtask) and
//! aborts a transaction it left open, so the marker read afterwards is final.

use super::metrics::{METRICS, NodeLabels};
use super::sink::Rec;
use eddy_sdk::ids::{CheckpointId, NodeId};
use eddy_sdk::spec::KafkaSinkSpec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

/// Attempts of one transaction before the sink fails.
const ATTEMPTS: u32 = 3;

/// A checkpoint's records, under the transactional id that owns them.
pub struct Buffer {
    pub txn_id: String,
    pub checkpoint: CheckpointId,
    pub records: Arc<Vec<Rec>>,
}

pub enum Job {
    /// Buffers restored from a checkpoint: write those above their id's marker.
    Restore(Vec<Buffer>),
    /// Buffers of committed checkpoints, under this subtask's own id.
    Commit(Vec<Buffer>),
}

#[derive(Debug)]
pub enum Done {
    Restored,
    /// Every buffer up to this checkpoint is in Kafka.
    Committed(CheckpointId),
    Failed(String, Option<KafkaError>),
    Exited,
}

/// The sink's side of the thread.
pub struct Committer {
    tx: Option<Sender<Job>>,
    rx: Receiver<Done>,
}

impl Committer {
    pub fn send(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|t| t.send(job).is_ok())
    }

    pub fn try_recv(&self) -> Option<Done> {
        self.rx.try_recv().ok()
    }

    /// Lets the thread finish its queue, waiting at most `bound`.
    pub fn finish(&mut self, bound: Duration) {
        self.tx = None;
        let deadline = Instant::now() + bound;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Done::Exited) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        "kafka sink: the committer did not finish in time; a restart fences it"
                    );
                    return;
                }
            }
        }
    }
}

/// What the thread needs to know.
pub struct Setup {
    pub node: NodeId,
    pub spec: KafkaSinkSpec,
    pub txn_id: String,
    pub round_robin: bool,
    pub labels: NodeLabels,
}

pub fn spawn(setup: Setup) -> std::io::Result<Committer> {
    let (job_tx, job_rx) = channel();
    let (done_tx, done_rx) = channel();
    let name = format!("kafka-commit-{}", setup.txn_id);
    std::thread::Builder::new().name(name).spawn(move || {
        let worker = Worker {
            setup,
            done: done_tx,
            partitions: None,
            next_partition: 0,
        };
        worker.run(job_rx);
    })?;
    Ok(Committer {
        tx: Some(job_tx),
        rx: done_rx,
    })
}

struct Worker {
    setup: Setup,
    done: Sender<Done>,
    partitions: Option<i32>,
    next_partition: i32,
}

/// One transactional id, initialised (its predecessors fenced).
struct Transactional {
    id: String,
    producer: BaseProducer,
    marker: BaseConsumer,
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>) {
        let own = match self.open(&self.setup.txn_id.clone()) {
            Ok(t) => t,
            Err(e) => {
                let _ = self.done.send(Done::Failed(
                    format!("cannot initialise transactional id {}", self.setup.txn_id),
                    Some(e),
                ));
                let _ = self.done.send(Done::Exited);
                return;
            }
        };
        while let Ok(job) = jobs.recv() {
            let result = match job {
                Job::Restore(buffers) => self.restore(&own, buffers).map(|()| Done::Restored),
                Job::Commit(buffers) => {
                    let last = buffers.iter().map(|b| b.checkpoint).max();
                    self.commit(&own, &buffers)
                        .map(|()| Done::Committed(last.unwrap_or(CheckpointId(0))))
                }
            };
            let failed = result.is_err();
            let msg = match result {
                Ok(done) => done,
                Err((what, e)) => Done::Failed(what, e),
            };
            if self.done.send(msg).is_err() || failed {
                break;
            }
        }
        let _ = self.done.send(Done::Exited);
    }

    fn config(&self) -> ClientConfig {
        super::client_config(
            &self.setup.spec.bootstrap_servers,
            &self.setup.spec.properties,
        )
    }

    /// Initialises `id`: fences older producers, aborts what they left open.
    fn open(&self, id: &str) -> Result<Transactional, KafkaError> {
        let timeout = self
            .setup
            .spec
            .transaction_timeout
            .map_or(eddy_sdk::spec::DEFAULT_TRANSACTION_TIMEOUT, |d| d.0);
        let mut config = self.config();
        config
            .set("transactional.id", id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
        if !self.setup.round_robin {
            config.set("partitioner", "murmur2_random");
        }
        let producer: BaseProducer = config.create()?;
        producer.init_transactions(timeout)?;
        let marker: BaseConsumer = self
            .config()
            .set("group.id", id)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        tracing::info!(node = %self.setup.node, transactional_id = id, "kafka sink initialised its transactional id");
        Ok(Transactional {
            id: id.to_string(),
            producer,
            marker,
        })
    }

    /// The newest checkpoint whose records are committed under `t`.
    fn marker(&self, t: &Transactional) -> Result<u64, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.setup.spec.topic, 0);
        let got = t.marker.committed_offsets(tpl, Duration::from_secs(30))?;
        Ok(got
            .find_partition(&self.setup.spec.topic, 0)
            .and_then(|e| match e.offset() {
                Offset::Offset(n) if n > 0 => Some(n as u64),
                _ => None,
            })
            .unwrap_or(0))
    }

    fn restore(
        &mut self,
        own: &Transactional,
        buffers: Vec<Buffer>,
    ) -> Result<(), (String, Option<KafkaError>)> {
        let mut by_id: BTreeMap<String, Vec<Buffer>> = BTreeMap::new();
        for b in buffers {
            by_id.entry(b.txn_id.clone()).or_default().push(b);
        }
        for (id, mut buffers) in by_id {
            buffers.sort_by_key(|b| b.checkpoint);
            let other;
            let t = if id == own.id {
                own
            } else {
                other = self.open(&id).map_err(|e| {
                    (
                        format!("cannot initialise inherited transactional id {id}"),
                        Some(e),
                    )
                })?;
                &other
            };
            let marker = self
                .marker(t)
                .map_err(|e| (format!("cannot read the commit marker of {id}"), Some(e)))?;
            let todo: Vec<Buffer> = buffers
                .into_iter()
                .filter(|b| b.checkpoint.0 > marker)
                .collect();
            tracing::info!(node = %self.setup.node, transactional_id = %id, marker, rewrite = todo.len(), "kafka sink resolved the transactions of its restored checkpoint");
            if !todo.is_empty() {
                self.write(t, &todo)?;
            }
        }
        Ok(())
    }

    fn commit(
        &mut self,
        own: &Transactional,
        buffers: &[Buffer],
    ) -> Result<(), (String, Option<KafkaError>)> {
        if buffers.is_empty() {
            return Ok(());
        }
        self.write(own, buffers)
    }

    /// One transaction: every record of `buffers`, then the marker.
    fn write(
        &mut self,
        t: &Transactional,
        buffers: &[Buffer],
    ) -> Result<(), (String, Option<KafkaError>)> {
        let started = Instant::now();
        let last = buffers
            .iter()
            .map(|b| b.checkpoint)
            .max()
            .unwrap_or(CheckpointId(0));
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_write(t, buffers, last) {
                Ok(()) => break,
                Err(e) => {
                    METRICS
                        .produce_errors
                        .get_or_create(&self.setup.labels)
                        .inc();
                    let abortable = matches!(&e, KafkaError::Transaction(r) if r.txn_requires_abort() || r.is_retriable());
                    tracing::warn!(node = %self.setup.node, transactional_id = %t.id, checkpoint_id = last.0, attempt, error = %e, "kafka sink transaction failed");
                    if abortable && attempt < ATTEMPTS {
                        // An abort that does not complete (librdkafka keeps
                        // it pending while a request to an unreachable
                        // coordinator is in flight, up to its request
                        // timeout) makes every retry fail with "conflicting
                        // abort_transaction call": fail now, a restart
                        // fences this producer.
                        if let Err(abort) = t.producer.abort_transaction(Duration::from_secs(30)) {
                            tracing::warn!(node = %self.setup.node, transactional_id = %t.id, checkpoint_id = last.0, error = %abort, "kafka sink could not abort the failed transaction");
                            return Err((
                                format!(
                                    "the transaction of checkpoint {} failed and could not be aborted",
                                    last.0
                                ),
                                Some(e),
                            ));
                        }
                        continue;
                    }
                    let _ = t.producer.abort_transaction(Duration::from_secs(30));
                    return Err((
                        format!("the transaction of checkpoint {} failed", last.0),
                        Some(e),
                    ));
                }
            }
        }
        let (records, bytes) =
            buffers
                .iter()
                .flat_map(|b| b.records.iter())
                .fold((0u64, 0u64), |(n, s), r| {
                    (
                        n + 1,
                        s + (r.value.len() + r.key.as_ref().map_or(0, Vec::len)) as u64,
                    )
                });
        METRICS
            .records_out
            .get_or_create(&self.setup.labels)
            .inc_by(records);
        METRICS
            .bytes_out
            .get_or_create(&self.setup.labels)
            .inc_by(bytes);
        METRICS
            .commit_seconds
            .get_or_create(&self.setup.labels)
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(node = %self.setup.node, transactional_id = %t.id, checkpoint_id = last.0, records, "kafka sink committed a transaction");
        Ok(())
    }

    fn try_write(
        &mut self,
        t: &Transactional,
        buffers: &[Buffer],
        last: CheckpointId,
    ) -> Result<(), KafkaError> {
        let topic = self.setup.spec.topic.clone();
        if self.setup.round_robin && self.partitions.is_none() {
            let n = super::partition_count(t.producer.client(), &topic)?;
            self.partitions = Some(n);
        }
        t.producer.begin_transaction()?;
        for r in buffers.iter().flat_map(|b| b.records.iter()) {
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(&topic).payload(r.value.as_slice());
            if let Some(k) = r.key.as_deref() {
                record = record.key(k);
            }
            if let Some(n) = self.partitions.filter(|_| self.setup.round_robin) {
                record = record.partition(self.next_partition % n);
                self.next_partition = (self.next_partition + 1) % n;
            }
            super::send(&t.producer, record)?;
        }
        let mut marker = TopicPartitionList::new();
        marker.add_partition_offset(&topic, 0, Offset::Offset(last.0 as i64))?;
        let group = t
            .marker
            .group_metadata()
            .ok_or(KafkaError::Global(RDKafkaErrorCode::InvalidGroupId))?;
        t.producer
            .send_offsets_to_transaction(&marker, &group, Duration::from_secs(30))?;
        t.producer.commit_transaction(Duration::from_secs(60))
    }
}
