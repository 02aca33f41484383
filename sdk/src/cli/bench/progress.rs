//! The steady rate of a run: how fast the sources went in the middle of the
//! run, apart from its start (deployment, warm-up) and its end (the last
//! windows firing, the job's final checkpoint).
//!
//! The JobManager learns each source subtask's row count from heartbeats, so
//! the count it shows moves in steps. The bench polls it often and keeps,
//! per subtask, the first poll at which each new count showed up: those
//! change points are when the count was true (within one poll interval).
//! A subtask's steady rate is the rows between its change points at 10% and
//! 90% of its final count over the time between them; the job's is the sum
//! over its source subtasks.

use std::time::Instant;

/// The share of a subtask's rows before the measured span starts, and after
/// it ends.
const SKIP: f64 = 0.10;

/// Change points of the source subtasks' row counts.
#[derive(Debug, Default)]
pub struct Progress {
    /// Per subtask: (when first seen, rows), rows strictly increasing.
    subtasks: Vec<Vec<(Instant, u64)>>,
}

impl Progress {
    /// Records the row counts of the source subtasks seen at `at`.
    pub fn observe(&mut self, at: Instant, rows: impl IntoIterator<Item = u64>) {
        for (i, r) in rows.into_iter().enumerate() {
            if self.subtasks.len() <= i {
                self.subtasks.resize_with(i + 1, Vec::new);
            }
            let points = &mut self.subtasks[i];
            if points.last().is_none_or(|&(_, last)| r > last) {
                points.push((at, r));
            }
        }
    }

    /// Rows per second of all source subtasks together in the middle of the
    /// run, or `None` when some subtask has too few change points to tell.
    pub fn steady_rows_per_second(&self) -> Option<f64> {
        if self.subtasks.is_empty() {
            return None;
        }
        self.subtasks.iter().map(|p| steady(p)).sum()
    }
}

fn steady(points: &[(Instant, u64)]) -> Option<f64> {
    let total = points.last()?.1 as f64;
    let from = points.iter().find(|p| p.1 as f64 >= total * SKIP)?;
    let to = points
        .iter()
        .rev()
        .find(|p| p.1 as f64 <= total * (1.0 - SKIP))?;
    let seconds = to.0.checked_duration_since(from.0)?.as_secs_f64();
    (seconds > 0.0 && to.1 > from.1).then(|| (to.1 - from.1) as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A subtask at `rate` rows/s whose count reaches the JobManager once a
    /// second, polled every 100 ms, with a slow start and a long end.
    fn run(progress: &mut Progress, rates: &[f64]) {
        let t0 = Instant::now();
        let mut counts = vec![0u64; rates.len()];
        for tick in 0..400u64 {
            let at = t0 + Duration::from_millis(100 * tick);
            let s = tick as f64 / 10.0;
            for (c, r) in counts.iter_mut().zip(rates) {
                // Heartbeats on whole seconds; nothing in the first 3 s
                // (deployment) nor after 33 s (the end of input).
                let beat = s.floor().clamp(3.0, 33.0);
                *c = ((beat - 3.0) * r) as u64;
            }
            progress.observe(at, counts.iter().copied());
        }
    }

    #[test]
    fn steady_rate_is_the_sum_of_the_subtasks_middle_rates() {
        let mut p = Progress::default();
        run(&mut p, &[1000.0, 3000.0]);
        let rate = p.steady_rows_per_second().expect("enough points");
        assert!((rate - 4000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn repeated_counts_are_not_change_points() {
        let mut p = Progress::default();
        let t0 = Instant::now();
        for (i, r) in [0, 10, 10, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
            .into_iter()
            .enumerate()
        {
            p.observe(t0 + Duration::from_secs(i as u64), [r]);
        }
        // 10 at t=1 .. 90 at t=11 (the repeats at t=2, 3 are not points).
        let rate = p.steady_rows_per_second().expect("enough points");
        assert!((rate - 8.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn too_few_points_tell_nothing() {
        let mut p = Progress::default();
        assert_eq!(p.steady_rows_per_second(), None);
        p.observe(Instant::now(), [5, 7]);
        assert_eq!(p.steady_rows_per_second(), None);
    }
}
