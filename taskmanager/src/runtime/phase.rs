//! Where a source subtask is in its life, and how checkpoint commands move
//! it on. Pure, so every ordering of commands can be tested.

use eddy_sdk::ids::CheckpointId;
use eddy_sdk::operator::BarrierKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Running,
    /// The source finished; waiting for a barrier after the final watermark.
    Draining,
    /// The final barrier went out; waiting for its commit.
    FinalBarrier(CheckpointId),
    /// A stop-with-savepoint barrier went out; waiting for its commit (or
    /// its abort, which resumes the source, or returns it to draining when
    /// it had already finished).
    Stopping {
        id: CheckpointId,
        finished: bool,
    },
    /// End the stream: flush operators (`true`) or not (after a stop).
    End {
        flush: bool,
    },
}

impl Phase {
    /// Whether a trigger should snapshot the source and send a barrier. A
    /// stopping source sends nothing after its savepoint barrier: a later
    /// barrier would make it wait, at its end, for a checkpoint the other
    /// (stopped) sources never join.
    pub(super) fn takes_checkpoints(self) -> bool {
        matches!(
            self,
            Phase::Running | Phase::Draining | Phase::FinalBarrier(_)
        )
    }

    /// The phase after the barrier of checkpoint `id` went out. A barrier
    /// after a final one means that checkpoint's commit never came (or it
    /// failed): the newer barrier serves as the final one.
    pub(super) fn after_barrier(self, kind: BarrierKind, id: CheckpointId) -> Phase {
        match (kind, self) {
            (BarrierKind::StopWithSavepoint, Phase::Running) => Phase::Stopping {
                id,
                finished: false,
            },
            (BarrierKind::StopWithSavepoint, Phase::Draining | Phase::FinalBarrier(_)) => {
                Phase::Stopping { id, finished: true }
            }
            (_, Phase::Draining | Phase::FinalBarrier(_)) => Phase::FinalBarrier(id),
            (_, other) => other,
        }
    }

    /// The phase after the commit of checkpoint `id`. Only a job-wide final
    /// checkpoint ends a finished source: until every source has ended, the
    /// others still need this subtask's part in their checkpoints. It ends
    /// it even after a newer barrier (a trigger that overtook the final
    /// notice): the other sources end at the final checkpoint and never
    /// join a newer one, and nothing was produced after it.
    pub(super) fn after_commit(self, id: CheckpointId, job_final: bool) -> Phase {
        match self {
            Phase::FinalBarrier(_) if job_final => Phase::End { flush: true },
            Phase::Stopping { id: b, .. } if id >= b => Phase::End { flush: false },
            other => other,
        }
    }

    /// The phase after checkpoint `id` was aborted.
    pub(super) fn after_abort(self, id: CheckpointId) -> Phase {
        match self {
            Phase::Stopping { id: b, finished } if b == id => {
                if finished {
                    Phase::Draining
                } else {
                    Phase::Running
                }
            }
            Phase::FinalBarrier(b) if b == id => Phase::Draining,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: BarrierKind = BarrierKind::Checkpoint;
    const STOP: BarrierKind = BarrierKind::StopWithSavepoint;

    fn id(n: u64) -> CheckpointId {
        CheckpointId(n)
    }

    #[test]
    fn running_source_stops_at_the_commit_of_its_savepoint_without_flushing() {
        let p = Phase::Running.after_barrier(STOP, id(4));
        assert_eq!(p.after_commit(id(3), false), p, "an older commit");
        assert_eq!(p.after_commit(id(4), false), Phase::End { flush: false });
    }

    #[test]
    fn stopping_source_takes_no_later_checkpoint() {
        // A trigger racing the savepoint's commit notice must not send a
        // barrier: the stopped sources never join that checkpoint.
        let p = Phase::Running.after_barrier(STOP, id(4));
        assert!(!p.takes_checkpoints());
        assert!(Phase::Running.takes_checkpoints());
        assert!(Phase::Draining.takes_checkpoints());
        assert!(Phase::FinalBarrier(id(2)).takes_checkpoints());
        assert_eq!(p.after_commit(id(4), false), Phase::End { flush: false });
    }

    #[test]
    fn finished_source_ends_at_the_commit_of_a_stop_savepoint() {
        // The source had finished and sent a final barrier (3) when the
        // stop came (4): the stop's commit ends it, final or not.
        for before in [Phase::Draining, Phase::FinalBarrier(id(3))] {
            let p = before.after_barrier(STOP, id(4));
            assert_eq!(
                p,
                Phase::Stopping {
                    id: id(4),
                    finished: true
                }
            );
            assert_eq!(p.after_commit(id(4), false), Phase::End { flush: false });
        }
    }

    #[test]
    fn aborted_stop_resumes_or_returns_to_draining() {
        let p = Phase::Running.after_barrier(STOP, id(4));
        assert_eq!(p.after_abort(id(3)), p, "another checkpoint's abort");
        assert_eq!(p.after_abort(id(4)), Phase::Running);
        let p = Phase::FinalBarrier(id(3)).after_barrier(STOP, id(4));
        assert_eq!(p.after_abort(id(4)), Phase::Draining);
    }

    #[test]
    fn finished_source_ends_only_at_a_job_final_commit() {
        let p = Phase::Draining.after_barrier(CP, id(5));
        assert_eq!(p, Phase::FinalBarrier(id(5)));
        assert_eq!(p.after_commit(id(5), false), p);
        assert_eq!(p.after_commit(id(6), true), Phase::End { flush: true });
        assert_eq!(p.after_abort(id(5)), Phase::Draining);
        // A newer barrier replaces the final one.
        assert_eq!(p.after_barrier(CP, id(6)), Phase::FinalBarrier(id(6)));
    }

    #[test]
    fn job_final_commit_ends_a_source_that_sent_a_newer_barrier() {
        // The trigger of 6 overtook the notice that 5 was the job's final
        // checkpoint: the other sources end at 5 and never join 6.
        let p = Phase::Draining
            .after_barrier(CP, id(5))
            .after_barrier(CP, id(6));
        assert_eq!(p.after_commit(id(5), false), p);
        assert_eq!(p.after_commit(id(5), true), Phase::End { flush: true });
    }

    #[test]
    fn running_source_ignores_commits_and_aborts() {
        let p = Phase::Running.after_barrier(CP, id(1));
        assert_eq!(p, Phase::Running);
        assert_eq!(p.after_commit(id(1), true), Phase::Running);
        assert_eq!(p.after_abort(id(1)), Phase::Running);
    }
}
