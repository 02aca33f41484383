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
    let out = run_chain(&mut ops, Element::Batch(batch(2)), true, None).unwrap();
    assert_eq!(out.len(), 4);
}

#[test]
fn run_chain_end_flushes_in_order_before_forwarding() {
    let mut ops: Vec<Box<dyn Operator>> = vec![Box::new(Dup), Box::new(Dup)];
    let out = run_chain(&mut ops, Element::EndOfStream, true, None).unwrap();
    // op0 flushes one batch, op1 doubles it and flushes its own, then the end.
    let kinds: Vec<&str> = out
        .iter()
        .map(|e| match e {
            Element::Batch(_) => "b",
            Element::Watermark(_) => "w",
            Element::LatencyMarker(_) => "m",
            Element::Barrier(_) => "|",
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
        stateful: Vec::new(),
    };
    let subtask = Subtask {
        chain,
        input: None,
        outputs: Outputs::new(vec![edge]),
        metrics: Arc::default(),
        checkpoints: None,
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
            Element::Barrier(_) => "|".into(),
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
        stateful: Vec::new(),
    };
    let metrics = Arc::new(SubtaskMetrics::default());
    let subtask = Subtask {
        chain,
        input: Some(gate),
        outputs: Outputs::default(),
        metrics: metrics.clone(),
        checkpoints: None,
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
