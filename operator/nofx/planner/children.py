"""childRun: another Template as a child Run of this one, bounded in depth and in the size of
the tree; its outputs become the step's."""

from __future__ import annotations

from typing import Any

from nofx.api.reasons import Reason
from nofx.api.run import TERMINAL_RUN_PHASES, StepStatus
from nofx.api.template import Step
from nofx.planner import budget, templating
from nofx.planner.facts import ChildRunRequest
from nofx.planner.naming import child_run_name
from nofx.planner.state import RunState


def start_child(state: RunState, step: Step, entry: StepStatus, context: dict[str, Any]) -> None:
    assert step.child_run is not None
    if budget.exceeded(state):
        return  # the Run stops at the end of this pass (budget.enforce)
    try:
        parameters = {
            key: templating.render(value, context) if isinstance(value, str) else value
            for key, value in (step.child_run.parameters or {}).items()
        }
    except templating.TemplateError as error:
        state.end(entry, "Failed", f"childRun parameters: {error}")
        return
    name = child_run_name(state.run.name, state.run.uid, step.name, entry.index)
    limits = state.world.limits
    if state.run.depth + 1 > limits.max_depth:
        message = (
            f"child Run {name} would be at depth {state.run.depth + 1}; the operator allows "
            f"{limits.max_depth} (--max-child-run-depth)"
        )
        state.end(entry, "Failed", message, Reason.CHILD_RUN_LIMIT)
        return
    if state.child_runs_left <= 0:
        message = (
            f"the tree of this Run's root already holds {limits.max_runs} child Runs, the "
            "operator's limit (--max-child-runs)"
        )
        state.end(entry, "Failed", message, Reason.CHILD_RUN_LIMIT)
        return
    state.child_runs_left -= 1
    state.decision.create_child_runs.append(
        ChildRunRequest(
            name=name,
            step=step.name,
            index=entry.index,
            template=step.child_run.template_ref.name,
            parameters=parameters,
            queue_name=state.status.queue_name,
        )
    )
    entry.phase = "Running"
    entry.child_run_name = name
    entry.started_at = state.now
    entry.message = f"child Run {name} running"


def advance_child(state: RunState, step: Step, entry: StepStatus) -> None:
    child = state.world.child_runs.get(entry.child_run_name or "")
    if child is not None and child.phase == "Missing":
        state.end(entry, "Failed", f"child Run {child.name} was deleted before it finished")
        return
    if child is not None and child.phase == "Rejected":
        message = f"the API server refused child Run {child.name}: {child.message}"
        state.end(entry, "Failed", message, Reason.CHILD_RUN_REJECTED)
        return
    if child is None or child.phase not in TERMINAL_RUN_PHASES:
        return
    if child.phase == "Succeeded":
        entry.outputs = child.outputs or {}
        state.end(entry, "Succeeded", f"child Run {child.name} succeeded")
    else:
        detail = f": {child.message}" if child.message else ""
        state.end(entry, "Failed", f"child Run {child.name} {child.phase.lower()}{detail}")


# --- phase changes ---
