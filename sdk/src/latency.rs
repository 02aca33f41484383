//! End-to-end latency from latency markers: the fixed histogram buckets both
//! servers share, and quantiles read from bucket counts.
//!
//! A source stamps a marker with the wall-clock time its oldest pending record
//! became due; the marker flows in-band behind the data (it waits in every
//! queue the data waits in, but no operator holds it back), and the sink
//! records `now - stamp` here. Bucket counts, not samples, travel to the
//! JobManager, so merging subtasks into a vertex is a sum.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the buckets, in microseconds; the last bucket is open.
pub const BOUNDS_US: [u64; 30] = [
    100, 250, 500, 750, 1_000, 1_500, 2_000, 3_000, 4_000, 5_000, 7_500, 10_000, 15_000, 20_000,
    30_000, 40_000, 50_000, 75_000, 100_000, 150_000, 200_000, 300_000, 500_000, 750_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];

/// Number of buckets: one per bound, plus the open one above the last.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bucket of a latency.
pub fn bucket_of(latency_us: u64) -> usize {
    BOUNDS_US.partition_point(|&b| b < latency_us)
}

/// A histogram written by one subtask and read by its reporters.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Histogram {
    pub fn observe_us(&self, latency_us: u64) {
        self.counts[bucket_of(latency_us)].fetch_add(1, Relaxed);
    }

    /// The counts per bucket; empty when nothing was observed (so reports
    /// of operators that are not sinks stay small).
    pub fn counts(&self) -> Vec<u64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        if counts.iter().all(|&c| c == 0) {
            Vec::new()
        } else {
            counts
        }
    }
}

/// Adds `other`'s bucket counts into `into` (either may be empty).
pub fn merge(into: &mut Vec<u64>, other: &[u64]) {
    if into.len() < other.len() {
        into.resize(other.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(other) {
        *a += b;
    }
}

/// The `q`-quantile (0..=1) in milliseconds, interpolated linearly inside
/// its bucket; `None` without samples. A quantile in the open bucket reports
/// the last bound: "at least this".
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the sample the quantile falls on, 1-based.
    let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        if (seen + c) as f64 >= rank {
            let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
            let Some(&upper) = BOUNDS_US.get(i) else {
                return Some(lower as f64 / 1000.0);
            };
            let within = (rank - seen as f64) / c as f64;
            return Some((lower as f64 + within * (upper - lower) as f64) / 1000.0);
        }
        seen += c;
    }
    Some(BOUNDS_US[BOUNDS_US.len() - 1] as f64 / 1000.0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bucket_of_bounds_are_inclusive_upper() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(100), 0);
        assert_eq!(bucket_of(101), 1);
        assert_eq!(bucket_of(60_000_000), BOUNDS_US.len() - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantile_of_no_samples_is_none() {
        assert_eq!(quantile_ms(&[], 0.5), None);
        assert_eq!(quantile_ms(&Histogram::default().counts(), 0.99), None);
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket() {
        let h = Histogram::default();
        // 100 samples in (1 ms, 1.5 ms]: p50 is half-way, p99 near the top.
        for _ in 0..100 {
            h.observe_us(1_200);
        }
        let c = h.counts();
        assert!((quantile_ms(&c, 0.5).unwrap() - 1.25).abs() < 1e-9);
        assert!((quantile_ms(&c, 0.99).unwrap() - 1.495).abs() < 1e-9);
    }

    #[test]
    fn quantile_p99_sees_the_slow_tail() {
        let h = Histogram::default();
        for _ in 0..980 {
            h.observe_us(2_000);
        }
        for _ in 0..20 {
            h.observe_us(80_000);
        }
        let c = h.counts();
        assert!(quantile_ms(&c, 0.5).unwrap() <= 2.0);
        let p99 = quantile_ms(&c, 0.99).unwrap();
        assert!((75.0..=100.0).contains(&p99), "{p99}");
    }

    #[test]
    fn quantile_in_the_open_bucket_reports_the_last_bound() {
        let h = Histogram::default();
        h.observe_us(120_000_000);
        assert_eq!(quantile_ms(&h.counts(), 0.5), Some(60_000.0));
    }

    #[test]
    fn merge_adds_counts_of_any_length() {
        let mut a = Vec::new();
        merge(&mut a, &[1, 2, 3]);
        merge(&mut a, &[1]);
        assert_eq!(a, [2, 2, 3]);
    }
}
