//! Source timing shared by the generator sources: the token bucket that paces
//! them to a rate, and the latency markers they send.

use eddy_sdk::operator::Collector;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// With a rate, a batch leaves at least this often: the longest a record waits
/// in a paced source for its batch to fill. At 100k rows/s that is 500-row
/// batches, large enough that per-batch costs stay far below per-row ones.
const MAX_LINGER: Duration = Duration::from_millis(5);
/// A paced source catches up at most this much time after a stall
/// (backpressure), instead of bursting everything it missed.
const MAX_BURST: Duration = Duration::from_millis(100);
/// Longest idle reported at once, so the runtime looks at the task regularly.
const MAX_IDLE: Duration = Duration::from_millis(100);

/// A token bucket: tokens accrue at `rate` per second, up to `MAX_BURST`
/// worth; a batch goes out once a linger's worth of tokens (or the rest of a
/// bounded input) is there.
#[derive(Debug)]
pub(crate) struct Pacing {
    rate: f64,
    tokens: f64,
    last: Instant,
    /// Rows per batch at this rate: what `MAX_LINGER` accrues, at least 1.
    pub(super) target: usize,
    cap: f64,
    /// How long the oldest row of the last batch taken had been due.
    backlog_age: Duration,
}

impl Pacing {
    pub(crate) fn new(rate: f64, batch_size: usize, now: Instant) -> Self {
        let target = ((rate * MAX_LINGER.as_secs_f64()).ceil() as usize).clamp(1, batch_size);
        let cap = (rate * MAX_BURST.as_secs_f64()).max(2.0 * target as f64);
        Pacing {
            rate,
            tokens: 0.0,
            last: now,
            target,
            cap,
            backlog_age: Duration::ZERO,
        }
    }

    /// How many rows (at most `limit`) may go out now, or how long to wait.
    pub(crate) fn take(&mut self, limit: usize, now: Instant) -> Result<usize, Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.cap);
        let want = self.target.min(limit);
        if self.tokens >= want as f64 {
            // Tokens accrue one per row-interval: the oldest of them has been
            // due for `tokens / rate`.
            self.backlog_age = Duration::from_secs_f64(self.tokens / self.rate);
            let n = (self.tokens.floor() as usize).min(limit);
            self.tokens -= n as f64;
            Ok(n)
        } else {
            let wait = Duration::from_secs_f64((want as f64 - self.tokens) / self.rate);
            Err(wait.clamp(Duration::from_millis(1), MAX_IDLE))
        }
    }

    /// How long the oldest row of the last batch `take` allowed had been due
    /// when it was taken.
    pub(crate) fn backlog_age(&self) -> Duration {
        self.backlog_age
    }
}

/// Sends a latency marker after a batch at most once per interval. The stamp
/// is when the batch's oldest row became due (for an unpaced source: when it
/// was generated), so the sink measures the whole ingest-to-sink path,
/// including the wait for the batch to fill.
#[derive(Debug)]
pub(crate) struct LatencyMarks {
    interval: Duration,
    next: Instant,
}

impl LatencyMarks {
    pub(crate) fn new(interval: Option<Duration>, now: Instant) -> Option<Self> {
        interval.map(|interval| LatencyMarks {
            interval,
            next: now + interval,
        })
    }

    /// After a batch of a source paced by `pacing` (or unpaced) went into
    /// `out`: a marker if one is due and markers are on.
    pub(crate) fn after_source_batch(
        marks: &mut Option<LatencyMarks>,
        pacing: Option<&Pacing>,
        out: &mut Collector,
    ) {
        if let Some(marks) = marks {
            let age = pacing.map_or(Duration::ZERO, Pacing::backlog_age);
            marks.after_batch(age, Instant::now(), out);
        }
    }

    /// Called after a batch went into `out`; `age` is how long its oldest row
    /// had been due.
    pub(crate) fn after_batch(&mut self, age: Duration, now: Instant, out: &mut Collector) {
        if now < self.next {
            return;
        }
        self.next = now + self.interval;
        let wall = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        out.latency_marker(wall);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use eddy_sdk::operator::Element;

    #[test]
    fn pacing_emits_small_batches_at_the_rate() {
        let t0 = Instant::now();
        // 1000 rows/s: 5 rows accrue per 5 ms linger.
        let mut p = Pacing::new(1000.0, 8192, t0);
        assert_eq!(p.target, 5);
        assert!(p.take(8192, t0).is_err());
        assert!(
            p.take(8192, t0 + Duration::from_millis(3)).is_err(),
            "3 tokens are not a batch yet"
        );
        assert_eq!(p.take(8192, t0 + Duration::from_millis(6)), Ok(6));
        assert_eq!(p.backlog_age(), Duration::from_millis(6));
        // A long stall catches up at most MAX_BURST worth (100 rows at this rate).
        assert_eq!(p.take(8192, t0 + Duration::from_secs(60)), Ok(100));
        // The end of a bounded input does not wait for a full batch.
        assert_eq!(
            p.take(2, t0 + Duration::from_secs(60) + Duration::from_millis(2)),
            Ok(2)
        );
    }

    #[test]
    fn pacing_high_rate_uses_full_batches() {
        let t0 = Instant::now();
        let mut p = Pacing::new(10_000_000.0, 8192, t0);
        assert_eq!(p.target, 8192);
        assert_eq!(p.take(8192, t0 + Duration::from_millis(1)), Ok(8192));
        assert!(
            p.take(8192, t0 + Duration::from_millis(1)).is_err(),
            "1808 tokens left are not a batch"
        );
    }

    #[test]
    fn latency_marks_once_per_interval_stamped_with_the_backlog_age() {
        let t0 = Instant::now();
        let mut marks = LatencyMarks::new(Some(Duration::from_millis(200)), t0).unwrap();
        let mut out = Collector::new();
        marks.after_batch(Duration::ZERO, t0 + Duration::from_millis(100), &mut out);
        assert!(out.is_empty(), "the first interval has not passed");
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        marks.after_batch(
            Duration::from_secs(3),
            t0 + Duration::from_millis(250),
            &mut out,
        );
        marks.after_batch(Duration::ZERO, t0 + Duration::from_millis(300), &mut out);
        let stamps: Vec<i64> = out
            .drain()
            .map(|e| match e {
                Element::LatencyMarker(s) => s,
                other => panic!("not a marker: {other:?}"),
            })
            .collect();
        assert_eq!(stamps.len(), 1, "one marker per interval");
        let expected = (before - Duration::from_secs(3)).as_nanos() as i64;
        assert!((stamps[0] - expected).abs() < 1_000_000_000, "{stamps:?}");
    }

    #[test]
    fn latency_marks_off_without_interval() {
        assert!(LatencyMarks::new(None, Instant::now()).is_none());
    }
}
