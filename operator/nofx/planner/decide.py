"""decide(run, world): what should happen next for a Run, as one pure function.

It takes the Run (spec and last persisted status) and what the operator observed (Templates,
Agents, the Run's Jobs and child Runs, free agent slots, the time) and returns a Decision: the
new status plus the actions that bring the cluster there. It never talks to a server. Steps only
move forward: Pending → Waiting → Running → Succeeded | Failed | Skipped | Cancelled (Waiting ↔
Running again between retry attempts).
"""

from __future__ import annotations

from pydantic import ValidationError

from nofx.api.reasons import Reason
from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.planner import progress
from nofx.planner.conditions import RECONCILE_ERROR, finish
from nofx.planner.facts import Decision, RunView, World
from nofx.planner.lifetime import expire
from nofx.planner.pinning import pin, pin_account
from nofx.planner.state import RunState
from nofx.planner.stopping import abort, inconsistency


def decide(run: RunView, world: World) -> Decision:
    status = run.status.model_copy(deep=True)
    decision = Decision(status)
    status.observed_generation = run.generation
    # Deciding works again: a ReconcileError shown earlier is over.
    status.conditions = [c for c in status.conditions or [] if c.type != RECONCILE_ERROR] or None
    problem = inconsistency(run.status)
    if problem is not None:
        abort(decision, world.now, Reason.INCONSISTENT_STATUS, problem)
        expire(run, world, decision)
        return decision
    if status.phase in TERMINAL_RUN_PHASES:
        expire(run, world, decision)
        return decision
    if status.account is None and not pin_account(run, world, decision):
        expire(run, world, decision)
        return decision
    if status.pinned is None and not pin(run, world, decision):
        if run.spec.cancel and status.phase == "Pending":
            decision.waiting_for.clear()
            finish(status, world.now, "Cancelled", "Cancelled", "cancelled before it started")
        expire(run, world, decision)  # a plan that cannot run finished too
        return decision
    try:
        state = RunState(run, world, decision)
    except ValidationError as error:
        message = f"status.pinned no longer validates, so the Run cannot go on: {error}"
        abort(decision, world.now, Reason.INCONSISTENT_STATUS, message)
        return decision
    progress.advance(state)
    return decision
