//! The run state machine: how a run's status and its count of outstanding work items answer
//! each transition, as pure functions over plain data.
//!
//! Every backend applies these rules: the in-memory backend calls these functions, and the
//! Redis scripts mirror them line for line (`floxide-redis/lua/common/state.lua`, functions of the
//! same names). A run's *outstanding* items are those not yet committed, dead-lettered or
//! dropped; a run finishes when none is left.

use crate::distributed::RunStatus;

/// The part of a run's record the transitions look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunState {
    /// Its status.
    pub status: RunStatus,
    /// Work items not yet committed, dead-lettered or dropped.
    pub outstanding: u64,
    /// Whether a terminal node produced an output.
    pub has_output: bool,
}

/// The status a run ends with when no work is left: Completed with an output, else Failed
/// ("finished without output").
pub fn finished_status(has_output: bool) -> RunStatus {
    if has_output {
        RunStatus::Completed
    } else {
        RunStatus::Failed
    }
}

/// Whether a leased item's commit or failure report is still accepted: not once the run was
/// cancelled or completed (a failed run still takes its in-flight steps' results, so that a
/// resume finds them).
pub fn accepts_results(status: RunStatus) -> bool {
    !matches!(status, RunStatus::Cancelled | RunStatus::Completed)
}

/// Whether a ready item of a run in `status` may be leased now (else it waits, held, while
/// the run is paused or failed; or is dropped once the run is over).
pub fn takes_items(status: RunStatus) -> bool {
    status.is_active()
}

/// The run after a step of it committed, `state.outstanding` already counting the step's
/// item as done and its successors as new: a pending run is running, and a running run with
/// nothing left finishes. A paused (or failed) run keeps its status; resuming it finishes it.
pub fn after_commit(state: RunState) -> RunStatus {
    let status = match state.status {
        RunStatus::Pending => RunStatus::Running,
        other => other,
    };
    if status.is_active() && state.outstanding == 0 {
        finished_status(state.has_output)
    } else {
        status
    }
}

/// The batch rule for context changes (see `WorkerBackend::commit_batch`): once a step that
/// changes a run's context is refused, that run's later context changes in the same call are
/// refused too, as conflicts (a worker may have joined them onto the refused one, whose
/// version number another commit can reach).
#[derive(Debug, Default)]
pub struct ContextChains<'a> {
    broken: Vec<&'a str>,
}

impl<'a> ContextChains<'a> {
    /// Whether a step of `run` that changes the context (`changes`) is refused untried.
    pub fn refuses(&self, run: &str, changes: bool) -> bool {
        changes && self.broken.contains(&run)
    }

    /// Records how a step of `run` ended (`committed`, or refused).
    pub fn settled(&mut self, run: &'a str, changes: bool, committed: bool) {
        if changes && !committed {
            self.broken.push(run);
        }
    }
}

/// What a failed step's report does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureEffect {
    /// The run is over (cancelled or completed): the item is dropped, nothing is recorded.
    Inactive,
    /// The retry is scheduled; the run is unchanged.
    Retry,
    /// The item goes to the dead letters; the run becomes this status.
    DeadLetter(RunStatus),
}

/// A step of a run in `status` failed; `retry` tells whether its policy asks for another
/// attempt.
pub fn after_failure(status: RunStatus, retry: bool) -> FailureEffect {
    if !accepts_results(status) {
        FailureEffect::Inactive
    } else if retry {
        FailureEffect::Retry
    } else if status.is_finished() {
        FailureEffect::DeadLetter(status)
    } else {
        FailureEffect::DeadLetter(RunStatus::Failed)
    }
}

/// What an operator's request does to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEffect {
    /// Cancelled: its queued items are dropped; in-flight steps are refused at commit.
    Cancel,
    /// Paused: its ready items wait, held.
    Pause,
    /// Resumed: its held items (and the dead letters revived with it) are ready again, and the
    /// run has this status (Running, or finished when nothing is outstanding).
    Resume(RunStatus),
}

/// The action named when resuming a failed run that has nothing left to run is refused.
pub const NOTHING_TO_RESUME: &str = "resume: nothing is left to run";

/// The request was refused: the run's status does not allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// What was asked (`"cancel"`, `"pause"`, `"resume"`).
    pub action: &'static str,
}

/// Cancelling a run in `status`.
pub fn cancel(status: RunStatus) -> Result<ControlEffect, Refused> {
    if status.is_finished() {
        Err(Refused { action: "cancel" })
    } else {
        Ok(ControlEffect::Cancel)
    }
}

/// Pausing a run in `status`.
pub fn pause(status: RunStatus) -> Result<ControlEffect, Refused> {
    if status.is_active() {
        Ok(ControlEffect::Pause)
    } else {
        Err(Refused { action: "pause" })
    }
}

/// Resuming `state`, with `revived` dead letters of the run put back (a failed run's; they
/// count as outstanding again). A paused run runs again, and finishes at once when nothing is
/// outstanding (its last step committed while it was paused). A failed run runs again when
/// something was revived or is still outstanding; with nothing at all to run it is refused
/// and stays failed.
pub fn resume(state: RunState, revived: u64) -> Result<ControlEffect, Refused> {
    let outstanding = state.outstanding + revived;
    match state.status {
        RunStatus::Paused if outstanding == 0 => {
            Ok(ControlEffect::Resume(finished_status(state.has_output)))
        }
        RunStatus::Paused => Ok(ControlEffect::Resume(RunStatus::Running)),
        RunStatus::Failed if outstanding > 0 => Ok(ControlEffect::Resume(RunStatus::Running)),
        RunStatus::Failed => Err(Refused {
            action: NOTHING_TO_RESUME,
        }),
        _ => Err(Refused { action: "resume" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunStatus::*;

    fn state(status: RunStatus, outstanding: u64, has_output: bool) -> RunState {
        RunState {
            status,
            outstanding,
            has_output,
        }
    }

    #[test]
    fn a_commit_finishes_an_active_run_with_nothing_left() {
        assert_eq!(after_commit(state(Pending, 1, false)), Running);
        assert_eq!(after_commit(state(Running, 0, true)), Completed);
        assert_eq!(after_commit(state(Pending, 0, false)), Failed);
        assert_eq!(after_commit(state(Paused, 0, true)), Paused);
        assert_eq!(after_commit(state(Failed, 0, true)), Failed);
    }

    #[test]
    fn resume_finishes_a_paused_run_with_nothing_left_and_refuses_an_empty_failed_one() {
        assert_eq!(
            resume(state(Paused, 0, true), 0),
            Ok(ControlEffect::Resume(Completed))
        );
        assert_eq!(
            resume(state(Paused, 0, false), 0),
            Ok(ControlEffect::Resume(Failed))
        );
        assert_eq!(
            resume(state(Paused, 2, false), 0),
            Ok(ControlEffect::Resume(Running))
        );
        assert_eq!(
            resume(state(Failed, 0, false), 1),
            Ok(ControlEffect::Resume(Running))
        );
        assert!(resume(state(Failed, 0, false), 0).is_err());
        for status in [Pending, Running, Completed, Cancelled] {
            assert!(resume(state(status, 1, false), 0).is_err(), "{status}");
        }
    }

    #[test]
    fn failures_of_finished_runs_are_inactive() {
        assert_eq!(after_failure(Cancelled, false), FailureEffect::Inactive);
        assert_eq!(after_failure(Completed, true), FailureEffect::Inactive);
        assert_eq!(after_failure(Running, true), FailureEffect::Retry);
        assert_eq!(
            after_failure(Paused, false),
            FailureEffect::DeadLetter(Failed)
        );
        assert_eq!(
            after_failure(Failed, false),
            FailureEffect::DeadLetter(Failed)
        );
    }

    #[test]
    fn a_refused_context_change_refuses_its_runs_later_ones_only() {
        let mut chains = ContextChains::default();
        assert!(!chains.refuses("a", true));
        chains.settled("a", true, false);
        chains.settled("b", false, false);
        assert!(chains.refuses("a", true));
        assert!(
            !chains.refuses("a", false),
            "a step without a change is tried"
        );
        assert!(
            !chains.refuses("b", true),
            "a refused step without a change breaks nothing"
        );
    }

    #[test]
    fn cancel_and_pause_follow_the_status() {
        assert_eq!(cancel(Paused), Ok(ControlEffect::Cancel));
        assert!(cancel(Completed).is_err());
        assert_eq!(pause(Running), Ok(ControlEffect::Pause));
        assert!(pause(Paused).is_err());
    }
}
