//! The Kafka source: a librdkafka consumer with a manual assignment.
//!
//! There is no consumer-group rebalancing inside a job: each subtask reads
//! the partitions whose key group it owns ([`super::assign`]), found by a
//! discovery thread that lists the topics' partitions at the start and every
//! `partition_discovery_interval`. The next offset of every assigned
//! partition is the source's checkpointed state (one entry per partition
//! under its key group), so a restore, at any parallelism, resumes each
//! partition exactly where the checkpoint's barrier left it. Offsets are
//! committed to `group_id` after each checkpoint commit, for monitoring only.
//!
//! `poll` never blocks: it drains what librdkafka already fetched. Metadata,
//! start offsets and high watermarks (for lag) are fetched on the discovery
//! thread.

use super::decode::JsonDecoder;
use super::discovery::{self, Assignment, Discovery};
use super::metrics::{METRICS, NodeLabels, PartitionLabels};
pub use super::records::Tp;
use super::records::{Raw, dead_letter_record, metadata_column, parse_state_key, state_key};
use super::{client_config, connector_error};
use crate::operators::TaskContext;
use arrow::array::{ArrayRef, BinaryBuilder, RecordBatch};
use arrow::datatypes::{Schema, SchemaRef};
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{CheckpointId, NodeId};
use eddy_sdk::operator::{
    Barrier, Collector, OperatorError, RestoredState, Source, SourcePoll, StateChanges,
};
use eddy_sdk::spec::{KafkaFormat, KafkaSourceSpec, OnError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The source's state: the next offset of each partition.
pub const OFFSETS: &str = "offsets";
/// At most this many records per poll (one batch).
const MAX_RECORDS_PER_POLL: usize = 8192;
/// Consumer errors for this long, with no record in between, fail the source.
const ERROR_GRACE: Duration = Duration::from_secs(20);
/// How long `poll` waits when librdkafka has nothing fetched.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// One assigned partition.
struct Partition {
    next: i64,
    /// The highest event time read, for its watermark.
    max_event_time: Option<i64>,
    last_record: Instant,
    /// The Kafka timestamp of the last record read (for the time lag).
    last_timestamp: Option<i64>,
    labels: PartitionLabels,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub struct KafkaSource {
    node: NodeId,
    spec: KafkaSourceSpec,
    schema: SchemaRef,
    /// The value's columns (the schema's first ones).
    value_schema: SchemaRef,
    decoder: Option<JsonDecoder>,
    consumer: Arc<BaseConsumer>,
    dead_letter: Option<BaseProducer>,
    ctx: TaskContext,
    discovery: Option<Discovery>,
    partitions: BTreeMap<Tp, Partition>,
    /// Offsets restored from a checkpoint (`None`: a fresh start).
    restored: Option<HashMap<Tp, i64>>,
    /// The offsets at the last snapshot; `None` forces a full rewrite.
    snapshotted: Option<HashMap<Tp, i64>>,
    /// Offsets to commit to the group once their checkpoint is committed.
    to_commit: BTreeMap<CheckpointId, Vec<(Tp, i64)>>,
    event_time: Option<(usize, i64)>,
    idle_timeout: Option<Duration>,
    watermark: i64,
    labels: NodeLabels,
    last_lag_update: Instant,
    /// Records behind and the oldest lagging age (ms), at the last update.
    lag: Option<(u64, u64)>,
    /// When the current run of consumer errors began, and its last error.
    errors_since: Option<(Instant, Instant)>,
}

impl KafkaSource {
    pub fn new(
        node: &NodeId,
        spec: &KafkaSourceSpec,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        let mut config = client_config(&spec.bootstrap_servers, &spec.properties);
        config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        if let Some(group) = &spec.group_id {
            config.set("group.id", group);
        } else {
            // librdkafka wants a group even for a manual assignment; nothing
            // is committed to it without `group_id`.
            config.set("group.id", format!("eddy-{}-{}", ctx.job_id, node));
        }
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| connector_error(node, "cannot create the Kafka consumer", e))?;
        let dead_letter = match (&spec.on_error, &spec.dead_letter_topic) {
            (OnError::DeadLetter, Some(_)) => Some(
                client_config(&spec.bootstrap_servers, &spec.properties)
                    .create::<BaseProducer>()
                    .map_err(|e| {
                        connector_error(node, "cannot create the dead-letter producer", e)
                    })?,
            ),
            _ => None,
        };
        let value_columns = match spec.format {
            KafkaFormat::Json => spec.schema.len(),
            KafkaFormat::Raw => 1,
        };
        let value_schema = Arc::new(Schema::new(schema.fields()[..value_columns].to_vec()));
        let event_time = spec.event_time.as_ref().and_then(|et| {
            schema
                .index_of(&et.column)
                .ok()
                .map(|i| (i, et.max_out_of_orderness.as_millis_i64()))
        });
        Ok(KafkaSource {
            node: node.clone(),
            spec: spec.clone(),
            decoder: (spec.format == KafkaFormat::Json)
                .then(|| JsonDecoder::new(Arc::clone(&value_schema))),
            value_schema,
            schema,
            consumer: Arc::new(consumer),
            dead_letter,
            ctx: ctx.clone(),
            discovery: None,
            partitions: BTreeMap::new(),
            restored: None,
            snapshotted: None,
            to_commit: BTreeMap::new(),
            event_time,
            idle_timeout: spec.idle_timeout.map(|d| d.0),
            watermark: i64::MIN,
            labels: NodeLabels::new(ctx, node),
            last_lag_update: Instant::now(),
            errors_since: None,
            lag: None,
        })
    }

    /// Applies what discovery found: new partitions join the assignment.
    fn take_assignments(&mut self) -> Result<(), OperatorError> {
        let Some(d) = &self.discovery else {
            return Ok(());
        };
        let mut changed = false;
        while let Some(found) = d.try_recv() {
            match found {
                Assignment::Partitions(list) => {
                    for (tp, next) in list {
                        if self.partitions.contains_key(&tp) {
                            continue;
                        }
                        tracing::info!(node = %self.node, subtask = self.ctx.subtask, topic = %tp.0, partition = tp.1, offset = next, "kafka source reads a new partition");
                        let labels = PartitionLabels {
                            job_id: self.ctx.job_id.to_string(),
                            node: self.node.to_string(),
                            topic: tp.0.clone(),
                            partition: tp.1,
                        };
                        self.partitions.insert(
                            tp,
                            Partition {
                                next,
                                max_event_time: None,
                                last_record: Instant::now(),
                                last_timestamp: None,
                                labels,
                            },
                        );
                        changed = true;
                    }
                }
                Assignment::Failed(e) => {
                    return Err(connector_error(
                        &self.node,
                        "cannot list the partitions of the source's topics",
                        e,
                    ));
                }
            }
        }
        if changed {
            // A whole new assignment at our own positions: what librdkafka
            // had prefetched for the old one is dropped and fetched again.
            let mut tpl = TopicPartitionList::new();
            for ((topic, partition), p) in &self.partitions {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(p.next))
                    .map_err(|e| connector_error(&self.node, "bad partition", e))?;
            }
            self.consumer
                .assign(&tpl)
                .map_err(|e| connector_error(&self.node, "cannot assign partitions", e))?;
        }
        Ok(())
    }

    /// Reads what librdkafka has fetched, up to one batch.
    fn read(&mut self) -> Result<(Vec<Raw>, Vec<Tp>), OperatorError> {
        let mut records = Vec::new();
        let mut tps: Vec<Tp> = Vec::new();
        let mut index: HashMap<Tp, usize> = HashMap::new();
        while records.len() < MAX_RECORDS_PER_POLL {
            let msg = match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    self.consume_error(e)?;
                    break;
                }
            };
            self.errors_since = None;
            let tp = (msg.topic().to_string(), msg.partition());
            let Some(p) = self.partitions.get(&tp) else {
                continue; // left over from an older assignment
            };
            if msg.offset() < p.next {
                continue; // already emitted (prefetched before a reassignment)
            }
            let next = tps.len();
            let i = *index.entry(tp.clone()).or_insert_with(|| {
                tps.push(tp);
                next
            });
            let headers = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|Header { key, value }| (key.to_string(), value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            records.push(Raw {
                tp: i,
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec),
                timestamp: msg.timestamp().to_millis(),
                headers,
            });
        }
        Ok((records, tps))
    }

    /// A consumer error. librdkafka retries connections itself, so a
    /// transport error fails the source only when errors go on for
    /// [`ERROR_GRACE`] without a record in between; authorization errors
    /// fail it at once.
    fn consume_error(&mut self, e: KafkaError) -> Result<(), OperatorError> {
        let fatal = matches!(
            e.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
            )
        );
        let now = Instant::now();
        // A quiet spell ends a run of errors even without records (an idle
        // topic).
        let since = match self.errors_since {
            Some((since, last)) if now.duration_since(last) < ERROR_GRACE / 2 => since,
            _ => now,
        };
        self.errors_since = Some((since, now));
        if fatal || since.elapsed() >= ERROR_GRACE {
            return Err(OperatorError::new(
                FailureClass::Connector,
                format!("kafka source `{}`: the consumer failed", self.node),
            )
            .with_source(e));
        }
        tracing::warn!(node = %self.node, subtask = self.ctx.subtask, error = %e, "kafka consumer error; librdkafka retries");
        Ok(())
    }

    /// Decodes `records` per the format and error policy into the output batch.
    fn decode(
        &mut self,
        records: &[Raw],
        tps: &[Tp],
    ) -> Result<Option<RecordBatch>, OperatorError> {
        let (values, rows): (RecordBatch, Vec<usize>) = match &self.decoder {
            None => {
                let mut b = BinaryBuilder::new();
                for r in records {
                    b.append_option(r.value.as_deref());
                }
                let batch = RecordBatch::try_new(
                    Arc::clone(&self.value_schema),
                    vec![Arc::new(b.finish()) as ArrayRef],
                )
                .map_err(|e| crate::operators::plan_error(format!("raw value column: {e}")))?;
                (batch, (0..records.len()).collect())
            }
            Some(decoder) => {
                let values: Vec<Option<&[u8]>> =
                    records.iter().map(|r| r.value.as_deref()).collect();
                let decoded = decoder.decode(&values).map_err(|e| {
                    crate::operators::plan_error(format!(
                        "kafka source `{}`: decoding good values failed: {e}",
                        self.node
                    ))
                })?;
                for (i, err) in &decoded.bad {
                    let r = &records[*i];
                    let (topic, partition) = &tps[r.tp];
                    match self.spec.on_error {
                        OnError::Fail => {
                            return Err(OperatorError::new(
                                FailureClass::BadData,
                                format!(
                                    "kafka source `{}`: the record at topic {topic} partition {partition} offset {} is not valid JSON for the schema: {err}",
                                    self.node, r.offset
                                ),
                            )
                            .with_source(err.clone()));
                        }
                        OnError::Skip => {
                            METRICS.records_skipped.get_or_create(&self.labels).inc();
                        }
                        OnError::DeadLetter => self.dead_letter(r, topic, *partition, err)?,
                    }
                }
                (decoded.batch, decoded.good)
            }
        };
        if rows.is_empty() {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = values.columns().to_vec();
        let good: Vec<&Raw> = rows.iter().map(|&i| &records[i]).collect();
        for m in &self.spec.metadata {
            columns.push(metadata_column(*m, &good, tps));
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns).map_err(|e| {
            crate::operators::plan_error(format!(
                "kafka source `{}` does not match its schema: {e}",
                self.node
            ))
        })?;
        if let Some((column, _)) = self.event_time {
            self.track_event_time(&batch, column, records, &rows, tps);
        }
        Ok(Some(batch))
    }

    /// Writes a bad record to the dead-letter topic, with the error and
    /// where it came from as headers. Delivery is awaited at the next barrier.
    fn dead_letter(
        &mut self,
        r: &Raw,
        topic: &str,
        partition: i32,
        err: &super::decode::RecordError,
    ) -> Result<(), OperatorError> {
        let (Some(producer), Some(dlq)) = (&self.dead_letter, &self.spec.dead_letter_topic) else {
            return Ok(());
        };
        super::send(producer, dead_letter_record(dlq, r, topic, partition, err))
            .map_err(|e| connector_error(&self.node, "cannot write to the dead-letter topic", e))?;
        producer.poll(Duration::ZERO);
        METRICS
            .records_dead_lettered
            .get_or_create(&self.labels)
            .inc();
        Ok(())
    }

    fn track_event_time(
        &mut self,
        batch: &RecordBatch,
        column: usize,
        records: &[Raw],
        rows: &[usize],
        tps: &[Tp],
    ) {
        let Some(ts) = super::event_time_millis(batch.column(column)) else {
            return;
        };
        for (row, &i) in rows.iter().enumerate() {
            if let Some(t) = ts(row)
                && let Some(p) = self.partitions.get_mut(&tps[records[i].tp])
            {
                p.max_event_time = Some(p.max_event_time.map_or(t, |m| m.max(t)));
            }
        }
    }

    /// The minimum over active partitions of `max event time - bound - 1`;
    /// a partition idle for `idle_timeout` does not hold it back.
    fn emit_watermark(&mut self, out: &mut Collector) {
        let Some((_, bound)) = self.event_time else {
            return;
        };
        let now = Instant::now();
        let mut min: Option<i64> = None;
        for p in self.partitions.values() {
            let idle = self
                .idle_timeout
                .is_some_and(|t| now.duration_since(p.last_record) >= t);
            if idle {
                continue;
            }
            let wm = p
                .max_event_time
                .map_or(i64::MIN, |t| t.saturating_sub(bound).saturating_sub(1));
            min = Some(min.map_or(wm, |m: i64| m.min(wm)));
        }
        if let Some(wm) = min
            && wm > self.watermark
        {
            self.watermark = wm;
            out.watermark(wm);
        }
    }

    fn update_lag(&mut self) {
        if self.last_lag_update.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_lag_update = Instant::now();
        let Some(d) = &self.discovery else { return };
        let highs = d.high_watermarks();
        let (mut total, mut oldest_ms) = (0u64, 0u64);
        for (tp, p) in &self.partitions {
            if let Some(high) = highs.get(tp) {
                let lag = (high - p.next).max(0);
                METRICS.lag_records.get_or_create(&p.labels).set(lag);
                let age_ms = match p.last_timestamp {
                    Some(ts) if lag > 0 => (now_ms() - ts).max(0) as u64,
                    _ => 0,
                };
                METRICS
                    .lag_seconds
                    .get_or_create(&p.labels)
                    .set(age_ms as f64 / 1000.0);
                total += lag as u64;
                oldest_ms = oldest_ms.max(age_ms);
            }
        }
        self.lag = Some((total, oldest_ms));
    }
}

impl Source for KafkaSource {
    fn metrics(&self) -> eddy_sdk::operator::OperatorMetrics {
        eddy_sdk::operator::OperatorMetrics {
            source_lag_records: self.lag.map(|l| l.0),
            source_lag_ms: self.lag.map(|l| l.1),
            ..Default::default()
        }
    }

    fn poll(&mut self, out: &mut Collector) -> Result<SourcePoll, OperatorError> {
        if self.discovery.is_none() {
            self.discovery = Some(discovery::spawn(
                &self.node,
                &self.spec,
                Arc::clone(&self.consumer),
                &self.ctx,
                self.restored.clone(),
            )?);
        }
        self.take_assignments()?;
        if let Some(p) = &self.dead_letter {
            p.poll(Duration::ZERO);
        }
        let (records, tps) = self.read()?;
        self.update_lag();
        if records.is_empty() {
            self.emit_watermark(out);
            return Ok(if out.is_empty() {
                SourcePoll::Idle(IDLE_POLL)
            } else {
                SourcePoll::Ready
            });
        }
        let bytes: usize = records
            .iter()
            .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
            .sum();
        METRICS
            .records_in
            .get_or_create(&self.labels)
            .inc_by(records.len() as u64);
        METRICS
            .bytes_in
            .get_or_create(&self.labels)
            .inc_by(bytes as u64);
        let batch = self.decode(&records, &tps)?;
        let now = Instant::now();
        for r in &records {
            if let Some(p) = self.partitions.get_mut(&tps[r.tp]) {
                p.next = p.next.max(r.offset + 1);
                p.last_record = now;
                p.last_timestamp = r.timestamp.or(p.last_timestamp);
            }
        }
        if let Some(batch) = batch {
            out.batch(batch);
        }
        self.emit_watermark(out);
        Ok(SourcePoll::Ready)
    }

    fn snapshot_state(
        &mut self,
        barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        // Dead letters of records before the barrier are delivered before
        // the checkpoint that skips them completes.
        if let Some(p) = &self.dead_letter {
            p.flush(Duration::from_secs(30))
                .map_err(|e| connector_error(&self.node, "cannot deliver dead letters", e))?;
        }
        let current: HashMap<Tp, i64> = self
            .partitions
            .iter()
            .map(|(tp, p)| (tp.clone(), p.next))
            .collect();
        // Restored offsets of partitions discovery has not handed over yet
        // stay in the state.
        let mut all = self.restored.clone().unwrap_or_default();
        all.extend(current.iter().map(|(k, v)| (k.clone(), *v)));
        let put = |changes: &mut StateChanges, tp: &Tp, next: i64| {
            let kg = super::assign::key_group(&tp.0, tp.1, self.ctx.max_parallelism);
            changes.put(OFFSETS, kg, state_key(tp), next.to_be_bytes().to_vec());
        };
        match &self.snapshotted {
            None => {
                changes.clear_all();
                for (tp, next) in &all {
                    put(changes, tp, *next);
                }
            }
            Some(last) => {
                for (tp, next) in &all {
                    if last.get(tp) != Some(next) {
                        put(changes, tp, *next);
                    }
                }
            }
        }
        // One debug line per partition and checkpoint (too many for info at
        // short intervals): what a restore from this checkpoint resumes at.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut sorted: Vec<_> = all.iter().collect();
            sorted.sort();
            for ((topic, partition), next) in sorted {
                tracing::debug!(node = %self.node, subtask = self.ctx.subtask, checkpoint_id = barrier.checkpoint.0, %topic, partition, offset = next, "kafka source snapshotted an offset");
            }
        }
        self.snapshotted = Some(all);
        if self.spec.group_id.is_some() {
            self.to_commit
                .insert(barrier.checkpoint, current.into_iter().collect());
        }
        Ok(())
    }

    fn restore_state(&mut self, mut state: RestoredState) -> Result<(), OperatorError> {
        let mut restored = HashMap::new();
        for e in state.take(OFFSETS) {
            let tp = parse_state_key(&e.key).ok_or_else(|| {
                OperatorError::new(
                    FailureClass::Infrastructure,
                    format!(
                        "kafka source `{}`: an offset entry in the checkpoint is unreadable",
                        self.node
                    ),
                )
            })?;
            let next = e
                .value
                .as_slice()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| {
                    OperatorError::new(
                        FailureClass::Infrastructure,
                        format!("kafka source `{}`: the offset of {}/{} in the checkpoint is not 8 bytes", self.node, tp.0, tp.1),
                    )
                })?;
            restored.insert(tp, next);
        }
        let checkpoint_id = state.checkpoint.map(|c| c.0);
        let mut sorted: Vec<_> = restored.iter().collect();
        sorted.sort();
        for ((topic, partition), next) in sorted {
            tracing::info!(node = %self.node, subtask = self.ctx.subtask, checkpoint_id, %topic, partition, offset = next, "kafka source restored an offset");
        }
        tracing::info!(node = %self.node, subtask = self.ctx.subtask, checkpoint_id, partitions = restored.len(), "kafka source restored its offsets");
        self.restored = Some(restored);
        self.snapshotted = None;
        crate::operators::window::unknown_states(&self.node, &state)
    }

    fn notify_checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<(), OperatorError> {
        let later = self
            .to_commit
            .split_off(&CheckpointId(checkpoint.0.saturating_add(1)));
        let done = std::mem::replace(&mut self.to_commit, later);
        let Some((_, offsets)) = done.into_iter().next_back() else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &offsets {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                continue;
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            // For monitoring only: the checkpoint holds the offsets.
            tracing::warn!(node = %self.node, checkpoint_id = checkpoint.0, error = %e, "kafka source could not commit offsets to its group");
        }
        Ok(())
    }
}
