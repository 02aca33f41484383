//! A test harness for operator chains: push batches, watermarks and the end
//! of input through a chain as the task runtime would, and collect what comes
//! out at the end.

use arrow::array::RecordBatch;
use eddy_sdk::operator::{
    Collector, Element, Operator, OperatorError, OperatorMetrics, Source, SourcePoll,
};

pub struct OperatorHarness {
    ops: Vec<Box<dyn Operator>>,
}

impl OperatorHarness {
    pub fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        OperatorHarness { ops }
    }

    /// Pushes one element through every operator in order; returns what the
    /// last one emitted. The end of input calls `on_end` and then forwards
    /// `EndOfStream`, as the runtime does.
    pub fn push(&mut self, element: Element) -> Result<Vec<Element>, OperatorError> {
        let mut pending = vec![element];
        for op in &mut self.ops {
            let mut next = Vec::new();
            for e in pending {
                let mut c = Collector::new();
                match e {
                    Element::Batch(b) => op.on_batch(b, &mut c)?,
                    Element::Watermark(w) => op.on_watermark(w, &mut c)?,
                    Element::EndOfStream => {
                        op.on_end(&mut c)?;
                        c.push(Element::EndOfStream);
                    }
                    marker @ Element::LatencyMarker(_) => c.push(marker),
                }
                next.extend(c.drain());
            }
            pending = next;
        }
        Ok(pending)
    }

    pub fn batch(&mut self, b: RecordBatch) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::Batch(b))
    }

    pub fn watermark(&mut self, wm: i64) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::Watermark(wm))
    }

    pub fn end(&mut self) -> Result<Vec<Element>, OperatorError> {
        self.push(Element::EndOfStream)
    }

    pub fn metrics(&self, op: usize) -> OperatorMetrics {
        self.ops[op].metrics()
    }
}

pub fn batches(out: &[Element]) -> Vec<RecordBatch> {
    out.iter()
        .filter_map(|e| {
            if let Element::Batch(b) = e {
                Some(b.clone())
            } else {
                None
            }
        })
        .collect()
}

pub fn watermarks(out: &[Element]) -> Vec<i64> {
    out.iter()
        .filter_map(|e| {
            if let Element::Watermark(w) = e {
                Some(*w)
            } else {
                None
            }
        })
        .collect()
}

/// Polls an unpaced, bounded source until it finishes.
pub fn drain_source(source: &mut dyn Source) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut c = Collector::new();
    for _ in 0..1_000_000 {
        match source.poll(&mut c).unwrap() {
            SourcePoll::Ready => out.extend(batches(&c.drain().collect::<Vec<_>>())),
            SourcePoll::Idle(d) => panic!("an unpaced source went idle for {d:?}"),
            SourcePoll::Finished => {
                out.extend(batches(&c.drain().collect::<Vec<_>>()));
                return out;
            }
        }
    }
    panic!("the source did not finish")
}
