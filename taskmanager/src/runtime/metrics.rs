//! Per-subtask counters, written by the subtask on its slot thread and read by
//! the heartbeat reporter and `/metrics` on the control runtime. Everything is
//! a relaxed atomic: readers want recent values, not a consistent snapshot.

use eddy_proto::v1 as pb;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug)]
pub struct SubtaskMetrics {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    /// Bytes received over remote channels.
    pub bytes_in: AtomicU64,
    /// Bytes sent over remote channels.
    pub bytes_out: AtomicU64,
    /// The last watermark the chain emitted (`i64::MIN` before the first).
    pub watermark: AtomicI64,
    pub late_records_dropped: AtomicU64,
    /// Times watermark alignment started holding an input channel back.
    pub alignment_holds: AtomicU64,
    /// A Kafka source's lag (`u64::MAX`: none reported).
    pub source_lag_records: AtomicU64,
    pub source_lag_ms: AtomicU64,
    /// Ages of the latency markers that reached this subtask as a sink.
    pub latency: eddy_sdk::latency::Histogram,
    /// Total time blocked waiting for output credit, in nanoseconds.
    backpressured_ns: AtomicU64,
    /// Total time spent processing, in nanoseconds.
    busy_ns: AtomicU64,
    /// Ratios over the last sampling interval (see [`SubtaskMetrics::sample`]).
    backpressured_ms_per_sec: AtomicU32,
    busy_ms_per_sec: AtomicU32,
    /// The totals at the previous sample.
    last_backpressured_ns: AtomicU64,
    last_busy_ns: AtomicU64,
}

impl Default for SubtaskMetrics {
    fn default() -> Self {
        SubtaskMetrics {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            late_records_dropped: AtomicU64::new(0),
            alignment_holds: AtomicU64::new(0),
            source_lag_records: AtomicU64::new(u64::MAX),
            source_lag_ms: AtomicU64::new(u64::MAX),
            latency: eddy_sdk::latency::Histogram::default(),
            backpressured_ns: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            backpressured_ms_per_sec: AtomicU32::new(0),
            busy_ms_per_sec: AtomicU32::new(0),
            last_backpressured_ns: AtomicU64::new(0),
            last_busy_ns: AtomicU64::new(0),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SubtaskMetrics {
    pub fn add_backpressure(&self, d: Duration) {
        self.backpressured_ns.fetch_add(nanos(d), Relaxed);
    }
    pub fn add_busy(&self, d: Duration) {
        self.busy_ns.fetch_add(nanos(d), Relaxed);
    }
    pub fn backpressured_total(&self) -> Duration {
        Duration::from_nanos(self.backpressured_ns.load(Relaxed))
    }

    /// Turns the time accumulated since the previous call into per-second
    /// ratios. Called once per metrics interval by one sampler.
    pub fn sample(&self, interval: Duration) {
        let per_sec = |total: &AtomicU64, last: &AtomicU64| -> u32 {
            let now = total.load(Relaxed);
            let delta = now.saturating_sub(last.swap(now, Relaxed));
            let secs = interval.as_secs_f64().max(1e-3);
            // ms per second, capped: a wait that started before the interval
            // is accounted when it ends, which can exceed the interval.
            ((delta as f64 / 1e6) / secs).round().min(1000.0) as u32
        };
        self.backpressured_ms_per_sec.store(
            per_sec(&self.backpressured_ns, &self.last_backpressured_ns),
            Relaxed,
        );
        self.busy_ms_per_sec
            .store(per_sec(&self.busy_ns, &self.last_busy_ns), Relaxed);
    }

    pub fn backpressured_ms_per_sec(&self) -> u32 {
        self.backpressured_ms_per_sec.load(Relaxed)
    }

    pub fn to_proto(&self) -> pb::SubtaskMetrics {
        pb::SubtaskMetrics {
            records_in: self.records_in.load(Relaxed),
            records_out: self.records_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            backpressured_ms_per_sec: self.backpressured_ms_per_sec.load(Relaxed),
            busy_ms_per_sec: self.busy_ms_per_sec.load(Relaxed),
            watermark_ms: self.watermark.load(Relaxed),
            late_records_dropped: self.late_records_dropped.load(Relaxed),
            latency_buckets: self.latency.counts(),
            source_lag_records: Some(self.source_lag_records.load(Relaxed))
                .filter(|v| *v != u64::MAX),
            source_lag_ms: Some(self.source_lag_ms.load(Relaxed)).filter(|v| *v != u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_half_second_blocked_in_one_second_gives_500() {
        let m = SubtaskMetrics::default();
        m.add_backpressure(Duration::from_millis(500));
        m.add_busy(Duration::from_millis(250));
        m.sample(Duration::from_secs(1));
        assert_eq!(m.to_proto().backpressured_ms_per_sec, 500);
        assert_eq!(m.to_proto().busy_ms_per_sec, 250);
        m.sample(Duration::from_secs(1));
        assert_eq!(
            m.to_proto().backpressured_ms_per_sec,
            0,
            "no new wait in the second interval"
        );
    }
}
