//! Bounded out-of-orderness watermarks, at the end of the vertex that feeds a
//! window: after each batch the watermark is `max event time seen - bound - 1`
//! (Flink's `BoundedOutOfOrdernessWatermarks`), emitted only when it advances.
//!
//! This assigner owns event time for its edge, so watermarks from upstream are
//! swallowed, except the final `i64::MAX` that ends event time (Flink forwards
//! `Long.MAX_VALUE` for the same reason); the end of the input also emits it,
//! so the windows downstream fire everything they hold.

use super::plan_error;
use arrow::array::{AsArray, RecordBatch};
use arrow::compute::max;
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit, TimestampMillisecondType};
use eddy_sdk::operator::{Collector, Operator, OperatorError};

pub struct WatermarkAssigner {
    column: usize,
    /// Event time is an Int64 of ms (else a Timestamp(ms)).
    int64: bool,
    bound_ms: i64,
    /// The last watermark emitted.
    current: i64,
}

impl WatermarkAssigner {
    pub fn new(
        schema: &SchemaRef,
        column: &str,
        max_out_of_orderness_ms: i64,
    ) -> Result<Self, OperatorError> {
        let index = schema.index_of(column).map_err(|_| {
            plan_error(format!(
                "event-time column `{column}` is not in the chain's output"
            ))
        })?;
        let int64 = match schema.field(index).data_type() {
            DataType::Int64 => true,
            DataType::Timestamp(TimeUnit::Millisecond, _) => false,
            other => {
                return Err(plan_error(format!(
                    "event-time column `{column}` has type {other}"
                )));
            }
        };
        Ok(WatermarkAssigner {
            column: index,
            int64,
            bound_ms: max_out_of_orderness_ms.max(0),
            current: i64::MIN,
        })
    }

    fn advance(&mut self, wm: i64, out: &mut Collector) {
        if wm > self.current {
            self.current = wm;
            out.watermark(wm);
        }
    }
}

impl Operator for WatermarkAssigner {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Collector) -> Result<(), OperatorError> {
        let col = batch.column(self.column);
        let max_ts = if self.int64 {
            max(col.as_primitive::<Int64Type>())
        } else {
            max(col.as_primitive::<TimestampMillisecondType>())
        };
        out.batch(batch);
        if let Some(ts) = max_ts {
            // Saturating: an event time near i64::MIN must not wrap to the end of time.
            self.advance(ts.saturating_sub(self.bound_ms).saturating_sub(1), out);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut Collector) -> Result<(), OperatorError> {
        if watermark == i64::MAX {
            self.advance(i64::MAX, out);
        }
        Ok(())
    }

    fn on_end(&mut self, out: &mut Collector) -> Result<(), OperatorError> {
        self.advance(i64::MAX, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::harness::{OperatorHarness, batches, watermarks};
    use arrow::array::{Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn ts_batch(ts: &[Option<i64>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(TimestampMillisecondArray::from(ts.to_vec()))],
        )
        .unwrap()
    }

    #[test]
    fn watermark_follows_max_minus_bound_minus_one_and_only_advances() {
        let b = ts_batch(&[Some(1_000)]);
        let mut h = OperatorHarness::new(vec![Box::new(
            WatermarkAssigner::new(&b.schema(), "ts", 200).unwrap(),
        )]);
        let out = h.batch(ts_batch(&[Some(1_000), Some(900), None])).unwrap();
        assert_eq!(batches(&out).len(), 1, "the batch is forwarded");
        assert_eq!(watermarks(&out), [799]);
        // Older data and upstream watermarks do not move it.
        assert!(watermarks(&h.batch(ts_batch(&[Some(500)])).unwrap()).is_empty());
        assert!(watermarks(&h.watermark(5_000).unwrap()).is_empty());
        assert!(watermarks(&h.batch(ts_batch(&[None])).unwrap()).is_empty());
        assert_eq!(
            watermarks(&h.batch(ts_batch(&[Some(2_000)])).unwrap()),
            [1_799]
        );
        // The end of input ends event time, once.
        assert_eq!(watermarks(&h.watermark(i64::MAX).unwrap()), [i64::MAX]);
        assert!(watermarks(&h.end().unwrap()).is_empty());
    }

    #[test]
    fn watermark_accepts_int64_event_time_and_emits_max_at_end() {
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]));
        let mut h = OperatorHarness::new(vec![Box::new(
            WatermarkAssigner::new(&schema, "t", 0).unwrap(),
        )]);
        let b = RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![10, 30, 20]))])
            .unwrap();
        assert_eq!(watermarks(&h.batch(b).unwrap()), [29]);
        assert_eq!(watermarks(&h.end().unwrap()), [i64::MAX]);
    }

    #[test]
    fn watermark_rejects_non_time_column() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, false)]));
        assert!(WatermarkAssigner::new(&schema, "x", 0).is_err());
        assert!(WatermarkAssigner::new(&schema, "missing", 0).is_err());
    }
}
