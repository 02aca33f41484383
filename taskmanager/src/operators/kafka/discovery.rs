//! The source's discovery thread: lists the topics' partitions, picks the
//! ones this subtask owns, resolves where each starts, and keeps the
//! partitions' high watermarks for the lag metrics. Every call here blocks
//! (metadata, offsets), which is why it is off the slot thread.
//!
//! Where a partition starts: its offset in the restored checkpoint if there
//! is one; else, at a fresh start, `start_from`; else (a partition that
//! appeared after the job started, or after the checkpoint) the earliest
//! offset, so no record of a new partition is missed.

use super::source::Tp;
use crate::operators::TaskContext;
use eddy_sdk::ids::NodeId;
use eddy_sdk::operator::OperatorError;
use eddy_sdk::spec::{DEFAULT_DISCOVERY_INTERVAL, KafkaSourceSpec, StartFrom};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Timeout of one metadata or offsets request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed listing is retried this often until one succeeds.
const RETRY: Duration = Duration::from_secs(1);
/// The source fails when listings kept failing for this long (a periodic
/// listing that fails once does not: the last success is an interval old).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// High watermarks are refreshed this often.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

pub enum Assignment {
    /// Newly owned partitions and the offset each starts at.
    Partitions(Vec<(Tp, i64)>),
    /// Listing the partitions kept failing.
    Failed(KafkaError),
}

/// The source's handle; dropping it stops the thread.
pub struct Discovery {
    rx: Receiver<Assignment>,
    highs: Arc<Mutex<HashMap<Tp, i64>>>,
    stop: Arc<AtomicBool>,
}

impl Discovery {
    pub fn try_recv(&self) -> Option<Assignment> {
        self.rx.try_recv().ok()
    }

    /// The partitions' high watermarks as last fetched.
    pub fn high_watermarks(&self) -> HashMap<Tp, i64> {
        self.highs.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Worker {
    node: NodeId,
    spec: KafkaSourceSpec,
    pattern: Option<regex::Regex>,
    consumer: Arc<BaseConsumer>,
    key_groups: Range<u32>,
    max_parallelism: u32,
    restored: Option<HashMap<Tp, i64>>,
    tx: Sender<Assignment>,
    highs: Arc<Mutex<HashMap<Tp, i64>>>,
    stop: Arc<AtomicBool>,
}

pub fn spawn(
    node: &NodeId,
    spec: &KafkaSourceSpec,
    consumer: Arc<BaseConsumer>,
    ctx: &TaskContext,
    restored: Option<HashMap<Tp, i64>>,
) -> Result<Discovery, OperatorError> {
    let pattern = match &spec.topic_pattern {
        Some(p) => Some(regex::Regex::new(p).map_err(|e| {
            crate::operators::plan_error(format!("kafka source `{node}`: topic_pattern: {e}"))
        })?),
        None => None,
    };
    let (tx, rx) = channel();
    let highs = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        node: node.clone(),
        spec: spec.clone(),
        pattern,
        consumer,
        key_groups: ctx.key_groups(),
        max_parallelism: ctx.max_parallelism,
        restored,
        tx,
        highs: Arc::clone(&highs),
        stop: Arc::clone(&stop),
    };
    std::thread::Builder::new()
        .name(format!("kafka-discovery-{node}-{}", ctx.subtask))
        .spawn(move || worker.run())
        .map_err(|e| {
            OperatorError::new(
                eddy_sdk::FailureClass::Resources,
                format!("kafka source `{node}`: cannot start its discovery thread"),
            )
            .with_source(e)
        })?;
    Ok(Discovery { rx, highs, stop })
}

impl Worker {
    fn run(self) {
        let interval = self
            .spec
            .partition_discovery_interval
            .map_or(DEFAULT_DISCOVERY_INTERVAL, |d| d.0);
        let mut known: HashSet<Tp> = HashSet::new();
        let mut first = true;
        // When the current run of failed listings began (the start, for
        // the first listing).
        let mut failing_since = Some(Instant::now());
        let mut next_listing = Instant::now();
        let mut next_lag = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_listing {
                match self.list_and_resolve(&known, first) {
                    Ok(new) => {
                        failing_since = None;
                        first = false;
                        if !new.is_empty() {
                            known.extend(new.iter().map(|(tp, _)| tp.clone()));
                            if self.tx.send(Assignment::Partitions(new)).is_err() {
                                return;
                            }
                        }
                        next_listing = if interval.is_zero() {
                            now + Duration::from_secs(u64::from(u32::MAX))
                        } else {
                            now + interval
                        };
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.node, error = %e, "kafka source cannot list its partitions");
                        let since = *failing_since.get_or_insert(now);
                        if now.duration_since(since) >= GIVE_UP_AFTER {
                            let _ = self.tx.send(Assignment::Failed(e));
                            return;
                        }
                        next_listing = now + RETRY;
                    }
                }
            }
            if now >= next_lag && !known.is_empty() {
                self.refresh_highs(&known);
                next_lag = now + LAG_INTERVAL;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The owned partitions not in `known`, with their start offsets.
    fn list_and_resolve(
        &self,
        known: &HashSet<Tp>,
        first: bool,
    ) -> Result<Vec<(Tp, i64)>, KafkaError> {
        let mut new: Vec<Tp> = self
            .list()?
            .into_iter()
            .filter(|tp| !known.contains(tp))
            .filter(|tp| super::assign::owns(&self.key_groups, &tp.0, tp.1, self.max_parallelism))
            .collect();
        new.sort();
        let fresh = first && self.restored.is_none();
        let mut out = Vec::with_capacity(new.len());
        let mut unresolved = Vec::new();
        for tp in new {
            match self.restored.as_ref().and_then(|r| r.get(&tp)) {
                Some(next) => out.push((tp, *next)),
                None => unresolved.push(tp),
            }
        }
        let start = if fresh {
            self.spec.start_from.clone()
        } else {
            StartFrom::Earliest
        };
        for (tp, offset) in self.resolve(&unresolved, &start)? {
            out.push((tp, offset));
        }
        Ok(out)
    }

    /// Every partition of the source's topics.
    fn list(&self) -> Result<Vec<Tp>, KafkaError> {
        let mut out = Vec::new();
        let mut add = |metadata: rdkafka::metadata::Metadata, wanted: &dyn Fn(&str) -> bool| {
            for t in metadata.topics() {
                if t.error().is_some() || !wanted(t.name()) {
                    continue;
                }
                for p in t.partitions() {
                    out.push((t.name().to_string(), p.id()));
                }
            }
        };
        match (&self.spec.topics, &self.pattern) {
            (Some(topics), _) => {
                for topic in topics {
                    let md = self.consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
                    add(md, &|name| name == topic);
                }
            }
            (None, Some(re)) => {
                let md = self.consumer.fetch_metadata(None, REQUEST_TIMEOUT)?;
                add(md, &|name| !name.starts_with("__") && re.is_match(name));
            }
            (None, None) => {}
        }
        Ok(out)
    }

    /// The numeric start offset of each partition for `start`.
    fn resolve(&self, tps: &[Tp], start: &StartFrom) -> Result<Vec<(Tp, i64)>, KafkaError> {
        if tps.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(tps.len());
        match start {
            StartFrom::Earliest | StartFrom::Latest => {
                for tp in tps {
                    let (low, high) =
                        self.consumer
                            .fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT)?;
                    let at = if *start == StartFrom::Earliest {
                        low
                    } else {
                        high
                    };
                    out.push((tp.clone(), at));
                }
            }
            StartFrom::Committed => {
                let mut tpl = TopicPartitionList::new();
                for tp in tps {
                    tpl.add_partition(&tp.0, tp.1);
                }
                let committed = self.consumer.committed_offsets(tpl, REQUEST_TIMEOUT)?;
                for tp in tps {
                    // No committed offset: the earliest.
                    out.push((tp.clone(), self.found_or(&committed, tp, true)?));
                }
            }
            StartFrom::Timestamp(t) => {
                let mut tpl = TopicPartitionList::new();
                for tp in tps {
                    tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(t.timestamp_millis()))?;
                }
                let found = self.consumer.offsets_for_times(tpl, REQUEST_TIMEOUT)?;
                for tp in tps {
                    // No record at or after the instant: the end.
                    out.push((tp.clone(), self.found_or(&found, tp, false)?));
                }
            }
        }
        Ok(out)
    }

    /// The offset `found` has for `tp`, else its earliest (`low`) or end.
    fn found_or(&self, found: &TopicPartitionList, tp: &Tp, low: bool) -> Result<i64, KafkaError> {
        let at = found
            .find_partition(&tp.0, tp.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            });
        match at {
            Some(n) => Ok(n),
            None => {
                let (l, h) = self
                    .consumer
                    .fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT)?;
                Ok(if low { l } else { h })
            }
        }
    }

    fn refresh_highs(&self, known: &HashSet<Tp>) {
        let mut highs = HashMap::with_capacity(known.len());
        for tp in known {
            if let Ok((_, high)) = self.consumer.fetch_watermarks(&tp.0, tp.1, REQUEST_TIMEOUT) {
                highs.insert(tp.clone(), high);
            }
        }
        if let Ok(mut h) = self.highs.lock() {
            h.extend(highs);
        }
    }
}
