//! The Kafka sink.
//!
//! - `delivery: none` and `at_least_once` produce as batches arrive
//!   ([`super::direct`]);
//! - `exactly_once` keeps each checkpoint interval's records in the sink's
//!   checkpointed state and writes them in one Kafka transaction once the
//!   checkpoint is committed ([`super::txn`], ADR 0010).
//!
//! Values are JSON objects of all columns (`format: json`) or the bytes of
//! the column `value` (`raw`); keys are a JSON object of the `key` columns
//! (or with `raw`, the one key column's bytes).

use super::direct::Direct;
use super::metrics::NodeLabels;
use super::txn::{self, Buffer, Committer, Done, Job};
use crate::operators::TaskContext;
use crate::operators::sink::json_writer;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use eddy_sdk::FailureClass;
use eddy_sdk::ids::{CheckpointId, KeyGroup, NodeId};
use eddy_sdk::operator::{
    Barrier, Collector, Operator, OperatorError, RestoredState, StateChanges,
};
use eddy_sdk::operator_state::own_key_group;
use eddy_sdk::plan::schema::RAW_VALUE;
use eddy_sdk::spec::{Delivery, KafkaFormat, KafkaSinkSpec, SinkPartitioning};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The exactly-once sink's state: buffered records by transactional id,
/// checkpoint and chunk.
pub const BUFFERED: &str = "buffered";
/// A state entry holds at most about this many bytes of records.
const CHUNK_BYTES: usize = 1 << 20;

/// One record to produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

pub struct KafkaSink {
    node: NodeId,
    spec: KafkaSinkSpec,
    key_columns: Vec<usize>,
    value_column: Option<usize>,
    labels: NodeLabels,
    mode: Mode,
}

enum Mode {
    Direct(Direct),
    Exactly(Box<Exactly>),
}

impl KafkaSink {
    pub fn new(
        node: &NodeId,
        spec: &KafkaSinkSpec,
        input: &arrow::datatypes::SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Self, OperatorError> {
        let key_columns = spec
            .key
            .iter()
            .map(|k| input.index_of(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| crate::operators::plan_error(format!("kafka sink `{node}`: {e}")))?;
        let value_column =
            match spec.format {
                KafkaFormat::Json => None,
                KafkaFormat::Raw => Some(input.index_of(RAW_VALUE).map_err(|e| {
                    crate::operators::plan_error(format!("kafka sink `{node}`: {e}"))
                })?),
            };
        let labels = NodeLabels::new(ctx, node);
        let round_robin = spec.partitioning() == SinkPartitioning::RoundRobin;
        let mode = match spec.delivery {
            Delivery::ExactlyOnce => {
                let prefix = spec
                    .transactional_id_prefix
                    .clone()
                    .unwrap_or_else(|| format!("eddy-{}-{}", ctx.job_id, node));
                let txn_id = format!("{prefix}-{}", ctx.subtask);
                let committer = txn::spawn(txn::Setup {
                    node: node.clone(),
                    spec: spec.clone(),
                    txn_id: txn_id.clone(),
                    round_robin,
                    labels: labels.clone(),
                })
                .map_err(|e| {
                    OperatorError::new(
                        FailureClass::Resources,
                        format!("kafka sink `{node}`: cannot start its committer thread"),
                    )
                    .with_source(e)
                })?;
                Mode::Exactly(Box::new(Exactly {
                    txn_id,
                    own: own_key_group(&ctx.key_groups()),
                    current: Vec::new(),
                    pending: BTreeMap::new(),
                    handed: BTreeMap::new(),
                    restoring: None,
                    to_delete: Vec::new(),
                    committer,
                }))
            }
            delivery => Mode::Direct(Direct::create(
                node,
                spec,
                round_robin,
                delivery == Delivery::AtLeastOnce,
            )?),
        };
        Ok(KafkaSink {
            node: node.clone(),
            spec: spec.clone(),
            key_columns,
            value_column,
            labels,
            mode,
        })
    }

    /// The batch's records: keys and values encoded per the format.
    fn encode(&self, batch: &RecordBatch) -> Result<Vec<Rec>, OperatorError> {
        let n = batch.num_rows();
        let values: Vec<Vec<u8>> = match self.value_column {
            None => json_lines(batch, n)?,
            Some(i) => bytes_of(batch.column(i).as_ref(), n),
        };
        let keys: Option<Vec<Vec<u8>>> = if self.key_columns.is_empty() {
            None
        } else if self.spec.format == KafkaFormat::Raw {
            Some(bytes_of(batch.column(self.key_columns[0]).as_ref(), n))
        } else {
            let projected = batch
                .project(&self.key_columns)
                .map_err(|e| crate::operators::plan_error(format!("kafka sink key: {e}")))?;
            Some(json_lines(&projected, n)?)
        };
        Ok(values
            .into_iter()
            .enumerate()
            .map(|(i, value)| Rec {
                key: keys.as_ref().map(|k| k[i].clone()),
                value,
            })
            .collect())
    }

    fn check_committer(&mut self) -> Result<(), OperatorError> {
        let Mode::Exactly(x) = &mut self.mode else {
            return Ok(());
        };
        while let Some(done) = x.committer.try_recv() {
            match done {
                Done::Restored => {
                    if let Some(keys) = x.restoring.take() {
                        x.to_delete.extend(keys);
                    }
                }
                Done::Committed(upto) => {
                    let later = x.handed.split_off(&CheckpointId(upto.0.saturating_add(1)));
                    for keys in std::mem::replace(&mut x.handed, later).into_values() {
                        x.to_delete.extend(keys);
                    }
                }
                Done::Failed(what, e) => {
                    let err = OperatorError::new(
                        FailureClass::Connector,
                        format!("kafka sink `{}`: {what}", self.node),
                    );
                    return Err(match e {
                        Some(e) => err.with_source(e),
                        None => err,
                    });
                }
                Done::Exited => {
                    return Err(OperatorError::new(
                        FailureClass::Connector,
                        format!("kafka sink `{}`: the committer stopped", self.node),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Each row of `batch` as one JSON object.
fn json_lines(batch: &RecordBatch, n: usize) -> Result<Vec<Vec<u8>>, OperatorError> {
    let mut buf = Vec::new();
    let mut w = json_writer(&mut buf);
    w.write(batch)
        .and_then(|()| w.finish())
        .map_err(|e| crate::operators::sink::encode_error("kafka", e))?;
    let lines: Vec<Vec<u8>> = buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    debug_assert_eq!(lines.len(), n, "one JSON line per row");
    Ok(lines)
}

/// The bytes of a utf8 or binary column (null: empty).
fn bytes_of(col: &dyn Array, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            if col.is_null(i) {
                return Vec::new();
            }
            match col.data_type() {
                DataType::Utf8 => col.as_string::<i32>().value(i).as_bytes().to_vec(),
                DataType::LargeUtf8 => col.as_string::<i64>().value(i).as_bytes().to_vec(),
                DataType::Binary => col.as_binary::<i32>().value(i).to_vec(),
                DataType::LargeBinary => col.as_binary::<i64>().value(i).to_vec(),
                _ => Vec::new(),
            }
        })
        .collect()
}

impl Operator for KafkaSink {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Collector) -> Result<(), OperatorError> {
        self.check_committer()?;
        let records = self.encode(&batch)?;
        match &mut self.mode {
            Mode::Exactly(x) => x.current.extend(records),
            Mode::Direct(d) => d.produce(&self.node, &self.spec.topic, &self.labels, records)?,
        }
        Ok(())
    }

    fn snapshot_state(
        &mut self,
        barrier: &Barrier,
        changes: &mut StateChanges,
    ) -> Result<(), OperatorError> {
        self.check_committer()?;
        match &mut self.mode {
            Mode::Direct(d) => d.barrier(&self.node, &self.labels),
            Mode::Exactly(x) => {
                x.snapshot(barrier.checkpoint, changes);
                Ok(())
            }
        }
    }

    fn notify_checkpoint_complete(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<(), OperatorError> {
        self.check_committer()?;
        let Mode::Exactly(x) = &mut self.mode else {
            return Ok(());
        };
        let later = x
            .pending
            .split_off(&CheckpointId(checkpoint.0.saturating_add(1)));
        let ready = std::mem::replace(&mut x.pending, later);
        if ready.is_empty() {
            return Ok(());
        }
        let mut buffers = Vec::with_capacity(ready.len());
        for (cp, (records, keys)) in ready {
            x.handed.insert(cp, keys);
            buffers.push(Buffer {
                txn_id: x.txn_id.clone(),
                checkpoint: cp,
                records,
            });
        }
        if !x.committer.send(Job::Commit(buffers)) {
            return Err(OperatorError::new(
                FailureClass::Connector,
                format!("kafka sink `{}`: the committer stopped", self.node),
            ));
        }
        Ok(())
    }

    fn restore_state(&mut self, mut state: RestoredState) -> Result<(), OperatorError> {
        let entries = state.take(BUFFERED);
        crate::operators::window::unknown_states(&self.node, &state)?;
        let Mode::Exactly(x) = &mut self.mode else {
            return Ok(());
        };
        let mut grouped: BTreeMap<(String, CheckpointId), Vec<Chunk>> = BTreeMap::new();
        let mut keys = Vec::with_capacity(entries.len());
        for e in entries {
            let (txn_id, cp, chunk) = parse_key(&e.key).ok_or_else(|| {
                OperatorError::new(
                    FailureClass::Infrastructure,
                    format!(
                        "kafka sink `{}`: a buffered entry in the checkpoint is unreadable",
                        self.node
                    ),
                )
            })?;
            keys.push((e.key_group, e.key));
            grouped
                .entry((txn_id, cp))
                .or_default()
                .push((chunk, e.value));
        }
        let mut buffers = Vec::with_capacity(grouped.len());
        for ((txn_id, checkpoint), mut chunks) in grouped {
            chunks.sort_by_key(|(c, _)| *c);
            let mut records = Vec::new();
            for (_, bytes) in chunks {
                decode_chunk(&bytes, &mut records).ok_or_else(|| {
                    OperatorError::new(
                        FailureClass::Infrastructure,
                        format!(
                            "kafka sink `{}`: buffered records of checkpoint {} are corrupt",
                            self.node, checkpoint.0
                        ),
                    )
                })?;
            }
            buffers.push(Buffer {
                txn_id,
                checkpoint,
                records: Arc::new(records),
            });
        }
        tracing::info!(node = %self.node, buffers = buffers.len(), "kafka sink restored its buffered transactions");
        x.restoring = Some(keys);
        if !x.committer.send(Job::Restore(buffers)) {
            return Err(OperatorError::new(
                FailureClass::Connector,
                format!("kafka sink `{}`: the committer stopped", self.node),
            ));
        }
        Ok(())
    }

    fn on_end(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        match &mut self.mode {
            Mode::Direct(d) => d.barrier(&self.node, &self.labels),
            Mode::Exactly(x) => {
                if !x.current.is_empty() {
                    // The final checkpoint's barrier precedes the end of
                    // input, so this does not happen with checkpoints.
                    tracing::error!(node = %self.node, records = x.current.len(), "kafka sink: records after the final checkpoint are not written");
                }
                Ok(())
            }
        }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        if let Mode::Exactly(x) = &mut self.mode {
            // Committed checkpoints' transactions finish even when the
            // subtask ends (stop-with-savepoint, end of input).
            x.committer.finish(Duration::from_secs(30));
        }
    }
}

/// A state entry's place: key group and key.
type StateKey = (KeyGroup, Vec<u8>);
/// A numbered chunk of encoded records.
type Chunk = (u32, Vec<u8>);

/// The exactly-once side: buffers and the committer.
struct Exactly {
    txn_id: String,
    own: KeyGroup,
    /// Records since the last barrier.
    current: Vec<Rec>,
    /// Snapshotted buffers whose checkpoint is not committed yet, with
    /// their state keys.
    pending: BTreeMap<CheckpointId, (Arc<Vec<Rec>>, Vec<StateKey>)>,
    /// Buffers handed to the committer, awaiting its confirmation.
    handed: BTreeMap<CheckpointId, Vec<StateKey>>,
    /// State keys of restored buffers until the committer resolved them.
    restoring: Option<Vec<StateKey>>,
    /// State entries of buffers that are in Kafka: deleted at the next barrier.
    to_delete: Vec<StateKey>,
    committer: Committer,
}

impl Exactly {
    fn snapshot(&mut self, checkpoint: CheckpointId, changes: &mut StateChanges) {
        for (kg, key) in self.to_delete.drain(..) {
            changes.delete(BUFFERED, kg, key);
        }
        if self.current.is_empty() {
            return;
        }
        let records = std::mem::take(&mut self.current);
        let mut keys = Vec::new();
        for (chunk, bytes) in encode_chunks(&records).into_iter().enumerate() {
            let key = state_key(&self.txn_id, checkpoint, chunk as u32);
            changes.put(BUFFERED, self.own, key.clone(), bytes);
            keys.push((self.own, key));
        }
        self.pending.insert(checkpoint, (Arc::new(records), keys));
    }
}

/// `txn_id \0 checkpoint (8 bytes BE) chunk (4 bytes BE)`.
fn state_key(txn_id: &str, checkpoint: CheckpointId, chunk: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(txn_id.len() + 13);
    k.extend_from_slice(txn_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&checkpoint.0.to_be_bytes());
    k.extend_from_slice(&chunk.to_be_bytes());
    k
}

fn parse_key(key: &[u8]) -> Option<(String, CheckpointId, u32)> {
    let split = key.len().checked_sub(13)?;
    if key[split] != 0 {
        return None;
    }
    let cp = u64::from_be_bytes(key[split + 1..split + 9].try_into().ok()?);
    let chunk = u32::from_be_bytes(key[split + 9..].try_into().ok()?);
    Some((
        String::from_utf8(key[..split].to_vec()).ok()?,
        CheckpointId(cp),
        chunk,
    ))
}

/// Records as chunks of about [`CHUNK_BYTES`]: per record, a key length
/// (u32 BE, `u32::MAX` for no key), the key, a value length and the value.
fn encode_chunks(records: &[Rec]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    for r in records {
        match &r.key {
            Some(k) => {
                cur.extend_from_slice(&(k.len() as u32).to_be_bytes());
                cur.extend_from_slice(k);
            }
            None => cur.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
        cur.extend_from_slice(&(r.value.len() as u32).to_be_bytes());
        cur.extend_from_slice(&r.value);
        if cur.len() >= CHUNK_BYTES {
            chunks.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

fn decode_chunk(mut bytes: &[u8], out: &mut Vec<Rec>) -> Option<()> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    fn len(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    while !bytes.is_empty() {
        let key = match len(&mut bytes)? {
            u32::MAX => None,
            n => Some(take(&mut bytes, n as usize)?.to_vec()),
        };
        let n = len(&mut bytes)? as usize;
        let value = take(&mut bytes, n)?.to_vec();
        out.push(Rec { key, value });
    }
    Some(())
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
