"""Stopping a Run: cancel and the run timeout stop running work and skip what has not started;
abort fails a Run at once for a reason found outside the plan (a status someone else rewrote,
one the API server refused, an operator that keeps failing on it)."""

from __future__ import annotations

from datetime import datetime

from nofx.api.reasons import Reason
from nofx.api.run import STARTED_STEP_PHASES, TERMINAL_RUN_PHASES, RunStatus
from nofx.api.template import Step
from nofx.changes import step_label
from nofx.planner import lifetime
from nofx.planner.conditions import end_entry, finish
from nofx.planner.facts import Decision, RunView
from nofx.planner.state import RunState

_UNFINISHED_STEP_PHASES = ("Pending", "Waiting", *STARTED_STEP_PHASES)


def stop_everything(state: RunState, phase: str, reason: str, message: str) -> None:
    stop(state, [*state.plan.steps, *(state.plan.finally_ or [])], message)
    state.write_back()
    finish(state.status, state.now, phase, reason, message)
    lifetime.schedule_expiry(state)


def stop(state: RunState, steps: list[Step], message: str) -> None:
    """Running work of these steps is cancelled, work not started is skipped."""
    names = {step.name for step in steps}
    for (name, _), entry in state.entries.items():
        if name not in names:
            continue
        if entry.phase in STARTED_STEP_PHASES:
            if entry.job_name and entry.job_name not in state.decision.delete_jobs:
                state.decision.delete_jobs.append(entry.job_name)
            if entry.child_run_name:
                state.decision.cancel_child_runs.append(entry.child_run_name)
            state.end(entry, "Cancelled", message)
        elif entry.phase in ("Pending", "Waiting"):
            state.end(entry, "Skipped", message)


def inconsistency(status: RunStatus) -> str | None:
    """What makes a stored status impossible for the operator to have written: someone else
    wrote runs/status (the operator's alone). None if it is consistent."""
    unfinished = [step_label(e) for e in status.steps or [] if e.phase in _UNFINISHED_STEP_PHASES]
    if status.phase in TERMINAL_RUN_PHASES and unfinished:
        return (
            f"status.phase is {status.phase} while {', '.join(unfinished[:5])} had not finished: "
            "the status was changed by someone other than the operator"
        )
    if status.pinned is None and status.phase not in TERMINAL_RUN_PHASES and status.steps:
        return (
            "status.pinned is gone although the Run had started: the status was changed by "
            "someone other than the operator"
        )
    return None


def abort(decision: Decision, now: datetime, reason: Reason, message: str) -> None:
    """Fails the Run at once: running work is stopped, work not started is skipped. Needs
    nothing but the status, so it works when the pinned plan itself is broken."""
    status = decision.status
    stopped = f"stopped: the Run failed ({reason})"  # short: the Run's message says why
    for entry in status.steps or []:
        if entry.phase in STARTED_STEP_PHASES:
            if entry.job_name and entry.job_name not in decision.delete_jobs:
                decision.delete_jobs.append(entry.job_name)
            if entry.child_run_name:
                decision.cancel_child_runs.append(entry.child_run_name)
            end_entry(entry, now, "Cancelled", stopped)
        elif entry.phase in ("Pending", "Waiting"):
            end_entry(entry, now, "Skipped", stopped)
    decision.create_jobs.clear()
    decision.create_child_runs.clear()
    decision.waiting_for.clear()
    finish(status, now, "Failed", reason, message)


def abort_run(run: RunView, now: datetime, reason: Reason, message: str) -> Decision:
    """The Decision that fails a Run for a reason found outside decide() (the API server
    refused its status, or reconciling it keeps failing)."""
    decision = Decision(run.status.model_copy(deep=True))
    decision.status.observed_generation = run.generation
    abort(decision, now, reason, message)
    return decision
