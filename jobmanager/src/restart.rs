//! The restart strategy as a pure decision: on each failure of a job, restart
//! it after an exponentially growing backoff, or fail it for good once it
//! failed too often within a window (Flink's exponential-delay and
//! failure-rate strategies combined).
//!
//! Times are milliseconds of the leader's wall clock, passed in. The tracker
//! is plain data (serde) so that it can live in the replicated job record and
//! survive a change of leader.

use eddy_sdk::spec::RestartSettings;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Duration;

/// What to do about a failure.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Redeploy the job from its latest checkpoint after this wait.
    Restart { after: Duration },
    /// Too many failures: the job FAILS, for this reason.
    Fail { reason: String },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    /// Failure times within the last `interval`.
    recent_failures: VecDeque<i64>,
    /// The wait chosen for the previous restart.
    last_backoff_ms: Option<u64>,
    /// When the previous restart was due to run (failure time + backoff).
    last_restart_ms: Option<i64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Tracker {
    /// The decision for a failure at `now_ms`, recorded in the tracker.
    pub fn on_failure(&mut self, settings: &RestartSettings, now_ms: i64) -> Decision {
        let window = i64::try_from(millis(settings.interval.0)).unwrap_or(i64::MAX);
        while self
            .recent_failures
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= window)
        {
            self.recent_failures.pop_front();
        }
        self.recent_failures.push_back(now_ms);
        let failures = self.recent_failures.len();
        if failures > settings.max_failures_per_interval as usize {
            return Decision::Fail {
                reason: format!(
                    "{failures} failures within {}, more than the {} the restart strategy allows",
                    humantime::format_duration(settings.interval.0),
                    settings.max_failures_per_interval
                ),
            };
        }
        let reset = i64::try_from(millis(settings.reset_after.0)).unwrap_or(i64::MAX);
        let quiet = self
            .last_restart_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= reset);
        let initial = millis(settings.initial_backoff.0);
        let backoff = match self.last_backoff_ms {
            Some(prev) if !quiet => {
                let grown = (prev as f64 * settings.multiplier).round();
                (grown.min(u64::MAX as f64) as u64).min(millis(settings.max_backoff.0))
            }
            _ => initial,
        };
        self.last_backoff_ms = Some(backoff);
        self.last_restart_ms =
            Some(now_ms.saturating_add(i64::try_from(backoff).unwrap_or(i64::MAX)));
        Decision::Restart {
            after: Duration::from_millis(backoff),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use eddy_sdk::spec::HumanDuration;
    use proptest::prelude::*;

    fn settings() -> RestartSettings {
        RestartSettings {
            initial_backoff: HumanDuration(Duration::from_secs(1)),
            max_backoff: HumanDuration(Duration::from_secs(10)),
            multiplier: 2.0,
            reset_after: HumanDuration(Duration::from_secs(60)),
            max_failures_per_interval: 5,
            interval: HumanDuration(Duration::from_secs(300)),
        }
    }

    fn after(d: Decision) -> u64 {
        match d {
            Decision::Restart { after } => after.as_millis() as u64,
            Decision::Fail { reason } => panic!("failed: {reason}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let (s, mut t) = (settings(), Tracker::default());
        let waits: Vec<u64> = (0..5).map(|i| after(t.on_failure(&s, i * 1_000))).collect();
        assert_eq!(waits, [1_000, 2_000, 4_000, 8_000, 10_000]);
    }

    #[test]
    fn backoff_resets_after_a_quiet_period() {
        let (s, mut t) = (settings(), Tracker::default());
        assert_eq!(after(t.on_failure(&s, 0)), 1_000);
        assert_eq!(after(t.on_failure(&s, 5_000)), 2_000);
        // Restarted at 7 s, then ran 60 s without failing.
        assert_eq!(after(t.on_failure(&s, 67_000)), 1_000);
    }

    #[test]
    fn too_many_failures_in_the_interval_fail_the_job() {
        let (s, mut t) = (settings(), Tracker::default());
        for i in 0..5 {
            after(t.on_failure(&s, i * 10_000));
        }
        let Decision::Fail { reason } = t.on_failure(&s, 50_000) else {
            panic!("the 6th failure within 5 minutes must fail the job")
        };
        assert!(reason.contains("6 failures within 5m"), "{reason}");
    }

    #[test]
    fn failures_older_than_the_interval_do_not_count() {
        let (s, mut t) = (settings(), Tracker::default());
        for i in 0..5 {
            after(t.on_failure(&s, i * 100_000));
        }
        // The first two are more than 5 minutes old by now.
        after(t.on_failure(&s, 500_000));
    }

    proptest! {
        /// Whatever the failure times, a restart waits between the initial
        /// and the max backoff, and a job fails only with more failures in
        /// one interval than allowed.
        #[test]
        fn decisions_stay_within_bounds(gaps in proptest::collection::vec(0i64..400_000, 1..40)) {
            let (s, mut t) = (settings(), Tracker::default());
            let mut now = 0;
            let mut times: Vec<i64> = Vec::new();
            for gap in gaps {
                now += gap;
                times.push(now);
                let in_window = times.iter().filter(|&&x| now - x < 300_000).count();
                match t.on_failure(&s, now) {
                    Decision::Restart { after } => {
                        prop_assert!(in_window <= 5);
                        prop_assert!((1_000..=10_000).contains(&(after.as_millis() as u64)));
                    }
                    Decision::Fail { .. } => {
                        prop_assert!(in_window > 5);
                        break;
                    }
                }
            }
        }
    }
}
