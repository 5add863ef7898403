"""forEach: one status entry per item, started while maxParallel allows, then a join of their
outputs."""

from __future__ import annotations

from typing import Any

from nofx.api.run import STARTED_STEP_PHASES, TERMINAL_STEP_PHASES, StepStatus
from nofx.api.template import Step
from nofx.planner import attempts, children, validation
from nofx.planner.outputs import join_outputs
from nofx.planner.state import RunState


def expand(state: RunState, step: Step, entry: StepStatus, context: dict[str, Any]) -> None:
    items, problems = validation.expand_for_each(step, context)
    if problems:
        state.end(entry, "Failed", "; ".join(problems))
        return
    if not items:
        entry.outputs = {}
        state.end(entry, "Succeeded", "forEach over an empty list")
        return
    for index, item in enumerate(items):
        state.entries[(step.name, index)] = StepStatus(
            name=step.name, index=index, item=item, phase="Pending"
        )
    entry.phase = "Running"
    entry.started_at = state.now
    entry.message = f"0/{len(items)} items finished"


def advance_items(state: RunState, step: Step, entry: StepStatus) -> None:
    items = sorted(
        (
            e
            for (name, index), e in state.entries.items()
            if name == step.name and index is not None
        ),
        key=lambda e: e.index or 0,
    )
    # First learn what finished, then start items while maxParallel allows; an item waiting
    # for its retry starts again only when there is room, like a new one.
    for item in items:
        if item.phase in STARTED_STEP_PHASES:
            _advance_item(state, step, item)
    # Queued items count: maxParallel bounds the Jobs a step has, admitted or not.
    running = sum(1 for item in items if item.phase in STARTED_STEP_PHASES)
    for item in items:
        if item.phase not in ("Pending", "Waiting"):
            continue
        if item.next_attempt_at is not None and state.now < item.next_attempt_at:
            state.decision.wake_no_later_than(item.next_attempt_at)
            continue
        if step.max_parallel is not None and running >= step.max_parallel:
            continue
        _advance_item(state, step, item)
        running += item.phase in STARTED_STEP_PHASES
    finished = [item for item in items if item.phase in TERMINAL_STEP_PHASES]
    entry.message = f"{len(finished)}/{len(items)} items finished"
    if len(finished) < len(items):
        return
    failed = [str(item.index) for item in items if item.phase != "Succeeded"]
    entry.outputs = join_outputs([item.outputs or {} for item in items])
    if failed:
        state.end(entry, "Failed", f"items {', '.join(failed)} failed")
    else:
        state.end(entry, "Succeeded", f"all {len(items)} items succeeded")


def _advance_item(state: RunState, step: Step, item: StepStatus) -> None:
    context = state.context(item.item, item.index)
    if step.child_run is not None:
        if item.child_run_name is None:
            children.start_child(state, step, item, context)
        else:
            children.advance_child(state, step, item)
    elif item.attempts:
        attempts.advance_attempt(state, step, item, context, item.item)
    else:
        attempts.start_attempt(state, step, item, context, item.item)


# --- childRun: another Template as a child Run ---
