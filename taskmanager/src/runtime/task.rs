//! The subtask loop.

use super::{Error, InputGate, Outputs};
use crate::operators::Chain;
use crate::runtime::metrics::SubtaskMetrics;
use eddy_sdk::operator::{Collector, Element, Operator, SourcePoll};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

/// Everything one subtask runs with, wired and ready.
pub struct Subtask {
    pub chain: Chain,
    /// The merged input channels (none for a source vertex).
    pub input: Option<InputGate>,
    pub outputs: Outputs,
    pub metrics: Arc<SubtaskMetrics>,
}

impl Subtask {
    /// Runs until the end of stream has been processed and delivered, or an
    /// error. Cancellation is the caller's: it drops this future.
    pub async fn run(self) -> Result<(), Error> {
        let Subtask {
            chain,
            input,
            outputs,
            metrics,
        } = self;
        let Chain {
            source, operators, ..
        } = chain;
        let mut driver = Driver {
            operators,
            outputs,
            metrics,
        };
        match (source, input) {
            (Some(mut source), _) => loop {
                let started = Instant::now();
                let backpressured = driver.metrics.backpressured_total();
                let mut out = Collector::new();
                let poll = source.poll(&mut out)?;
                let produced: Vec<Element> = out.drain().collect();
                // A source vertex's records in are the rows its source
                // produced: the input of its chain.
                let rows: usize = produced
                    .iter()
                    .map(|e| match e {
                        Element::Batch(b) => b.num_rows(),
                        _ => 0,
                    })
                    .sum();
                driver.metrics.records_in.fetch_add(rows as u64, Relaxed);
                for e in produced {
                    driver.process(e).await?;
                }
                if let SourcePoll::Finished = poll {
                    // A finished source closes event time, then the stream.
                    driver.process(Element::Watermark(i64::MAX)).await?;
                    driver.process(Element::EndOfStream).await?;
                    driver.account_busy(started, backpressured);
                    break;
                }
                driver.account_busy(started, backpressured);
                match poll {
                    SourcePoll::Idle(wait) => tokio::time::sleep(wait).await,
                    // Other subtasks share this slot's thread: let them run.
                    _ => tokio::task::yield_now().await,
                }
            },
            (None, Some(mut gate)) => loop {
                // Waiting for input is neither busy nor backpressured.
                let element = gate.next().await?;
                let started = Instant::now();
                let backpressured = driver.metrics.backpressured_total();
                if let Element::Batch(b) = &element {
                    driver
                        .metrics
                        .records_in
                        .fetch_add(b.num_rows() as u64, Relaxed);
                }
                let end = matches!(element, Element::EndOfStream);
                driver.process(element).await?;
                driver.account_busy(started, backpressured);
                if end {
                    break;
                }
            },
            (None, None) => return Err(Error::NoInput),
        }
        driver.outputs.close().await
    }
}

struct Driver {
    operators: Vec<Box<dyn Operator>>,
    outputs: Outputs,
    metrics: Arc<SubtaskMetrics>,
}

impl Driver {
    /// One element through the chain, then to the outputs.
    async fn process(&mut self, element: Element) -> Result<(), Error> {
        let emitted = run_chain(&mut self.operators, element)?;
        let late: u64 = self
            .operators
            .iter()
            .map(|o| o.metrics().late_records_dropped)
            .sum();
        self.metrics.late_records_dropped.store(late, Relaxed);
        for e in emitted {
            match &e {
                Element::Batch(b) => {
                    self.metrics
                        .records_out
                        .fetch_add(b.num_rows() as u64, Relaxed);
                }
                Element::Watermark(wm) => self.metrics.watermark.store(*wm, Relaxed),
                Element::LatencyMarker(stamp) if self.outputs.is_empty() => {
                    self.metrics.latency.observe_us(age_us(*stamp));
                }
                Element::LatencyMarker(_) | Element::EndOfStream => {}
            }
            if !self.outputs.is_empty() {
                self.outputs.emit(e, &self.metrics).await?;
            }
        }
        // A rate-limited operator asks for a pause; the slot thread keeps
        // running other subtasks, and the input backs up into the exchange.
        if let Some(pause) = self.operators.iter_mut().filter_map(|o| o.throttle()).max() {
            tokio::time::sleep(pause).await;
        }
        Ok(())
    }

    fn account_busy(&self, started: Instant, backpressured_before: std::time::Duration) {
        let blocked = self
            .metrics
            .backpressured_total()
            .saturating_sub(backpressured_before);
        self.metrics
            .add_busy(started.elapsed().saturating_sub(blocked));
    }
}

/// Passes `element` through `operators` in order: what one operator emits is
/// the next one's input. The end of stream makes each operator flush
/// (`on_end`) before it is forwarded, so flushed data precedes it.
pub(crate) fn run_chain(
    operators: &mut [Box<dyn Operator>],
    element: Element,
) -> Result<Vec<Element>, Error> {
    let mut current = vec![element];
    let mut out = Collector::new();
    for op in operators.iter_mut() {
        for e in current.drain(..) {
            match e {
                Element::Batch(b) => op.on_batch(b, &mut out)?,
                Element::Watermark(wm) => op.on_watermark(wm, &mut out)?,
                Element::EndOfStream => {
                    op.on_end(&mut out)?;
                    out.push(Element::EndOfStream);
                }
                marker @ Element::LatencyMarker(_) => out.push(marker),
            }
        }
        current.extend(out.drain());
    }
    Ok(current)
}

/// Microseconds from a marker's stamp (unix ns) to now; 0 if the clock says
/// the marker is from the future (another host's clock ahead of this one).
fn age_us(stamp_unix_ns: i64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    u64::try_from(now.saturating_sub(stamp_unix_ns) / 1000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use eddy_sdk::operator::Result as OpResult;

    /// Doubles every batch; emits one extra batch at the end.
    struct Dup;
    impl Operator for Dup {
        fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> OpResult<()> {
            out.batch(batch.clone());
            out.batch(batch);
            Ok(())
        }
        fn on_end(&mut self, out: &mut Collector) -> OpResult<()> {
            out.batch(batch(1));
            Ok(())
        }
    }

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
    }

    #[test]
    fn run_chain_feeds_each_operator_the_previous_output() {
        let mut ops: Vec<Box<dyn Operator>> = vec![Box::new(Dup), Box::new(Dup)];
        let out = run_chain(&mut ops, Element::Batch(batch(2))).unwrap();
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn run_chain_end_flushes_in_order_before_forwarding() {
        let mut ops: Vec<Box<dyn Operator>> = vec![Box::new(Dup), Box::new(Dup)];
        let out = run_chain(&mut ops, Element::EndOfStream).unwrap();
        // op0 flushes one batch, op1 doubles it and flushes its own, then the end.
        let kinds: Vec<&str> = out
            .iter()
            .map(|e| match e {
                Element::Batch(_) => "b",
                Element::Watermark(_) => "w",
                Element::LatencyMarker(_) => "m",
                Element::EndOfStream => "end",
            })
            .collect();
        assert_eq!(kinds, ["b", "b", "b", "end"]);
    }

    /// Emits `n` batches of 2 rows, then finishes.
    struct Bounded(usize);
    impl eddy_sdk::operator::Source for Bounded {
        fn poll(&mut self, out: &mut Collector) -> OpResult<SourcePoll> {
            if self.0 == 0 {
                return Ok(SourcePoll::Finished);
            }
            self.0 -= 1;
            out.batch(batch(2));
            Ok(SourcePoll::Ready)
        }
    }

    struct Broken;
    impl Operator for Broken {
        fn on_batch(&mut self, _: RecordBatch, _: &mut Collector) -> OpResult<()> {
            Err(eddy_sdk::operator::OperatorError::new(
                eddy_sdk::FailureClass::BadData,
                "cannot parse row",
            ))
        }
    }

    fn source_subtask(
        operators: Vec<Box<dyn Operator>>,
    ) -> (
        Subtask,
        tokio::sync::mpsc::Receiver<crate::exchange::ChannelItem>,
    ) {
        let (queue, rx) = tokio::sync::mpsc::channel(64);
        let key = crate::exchange::ChannelKey {
            job_id: eddy_sdk::ids::JobId("j".into()),
            attempt: eddy_sdk::ids::Attempt(0),
            from_vertex: eddy_sdk::ids::VertexId(0),
            from_index: 0,
            to_vertex: eddy_sdk::ids::VertexId(1),
            to_index: 0,
        };
        let edge = crate::runtime::EdgeOutput::new(
            crate::runtime::Partitioner::Forward,
            vec![crate::exchange::OutputChannel::Local { key, queue }],
        );
        let chain = Chain {
            source: Some(Box::new(Bounded(3))),
            operators,
            output_schema: batch(0).schema(),
        };
        let subtask = Subtask {
            chain,
            input: None,
            outputs: Outputs::new(vec![edge]),
            metrics: Arc::default(),
        };
        (subtask, rx)
    }

    #[tokio::test]
    async fn subtask_finished_source_sends_final_watermark_then_end() {
        let (subtask, mut rx) = source_subtask(vec![Box::new(Dup)]);
        let metrics = subtask.metrics.clone();
        subtask.run().await.unwrap();
        let mut kinds = Vec::new();
        while let Ok(item) = rx.try_recv() {
            kinds.push(match item.unwrap() {
                Element::Batch(b) => format!("b{}", b.num_rows()),
                Element::Watermark(wm) => format!("w{}", wm == i64::MAX),
                Element::LatencyMarker(_) => "m".into(),
                Element::EndOfStream => "end".into(),
            });
        }
        // 3 batches doubled by Dup, the final watermark, Dup's flush at the end.
        assert_eq!(
            kinds,
            ["b2", "b2", "b2", "b2", "b2", "b2", "wtrue", "b1", "end"]
        );
        assert_eq!(metrics.records_out.load(Relaxed), 13);
        assert_eq!(
            metrics.records_in.load(Relaxed),
            6,
            "a source vertex counts its source's rows in"
        );
        assert_eq!(metrics.watermark.load(Relaxed), i64::MAX);
    }

    #[tokio::test]
    async fn subtask_operator_error_fails_with_its_class() {
        let (subtask, _rx) = source_subtask(vec![Box::new(Broken)]);
        let err = subtask.run().await.unwrap_err();
        assert_eq!(err.class(), eddy_sdk::FailureClass::BadData);
        assert!(
            eddy_sdk::error::error_chain(&err)
                .iter()
                .any(|m| m.contains("cannot parse row")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn subtask_reads_gate_until_every_channel_ended() {
        let (tx0, rx0) = tokio::sync::mpsc::channel(8);
        let (tx1, rx1) = tokio::sync::mpsc::channel(8);
        let gate = InputGate::new(vec![("a".into(), rx0), ("b".into(), rx1)]);
        let chain = Chain {
            source: None,
            operators: vec![Box::new(Dup)],
            output_schema: batch(0).schema(),
        };
        let metrics = Arc::new(SubtaskMetrics::default());
        let subtask = Subtask {
            chain,
            input: Some(gate),
            outputs: Outputs::default(),
            metrics: metrics.clone(),
        };
        let running = tokio::spawn(subtask.run());
        for tx in [&tx0, &tx1] {
            tx.send(Ok(Element::Batch(batch(4)))).await.unwrap();
            tx.send(Ok(Element::EndOfStream)).await.unwrap();
        }
        running.await.unwrap().unwrap();
        assert_eq!(metrics.records_in.load(Relaxed), 8);
        assert_eq!(
            metrics.records_out.load(Relaxed),
            17,
            "8 rows doubled plus the 1-row flush"
        );
    }
}
