"""While a Run runs: move every step forward as far as the observations allow, in the order of
its graph, then say what the Run as a whole is (still running, waiting for approval, done)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nofx.api.common import SUCCEEDED, parse_duration
from nofx.api.reasons import Reason
from nofx.api.run import STARTED_STEP_PHASES, TERMINAL_STEP_PHASES, StepStatus
from nofx.api.template import Step
from nofx.changes import step_label
from nofx.planner import attempts, budget, children, fanout, lifetime, stopping, templating
from nofx.planner.conditions import bounded, finish, set_condition
from nofx.planner.state import RunState


# The order of checks is the order of precedence: cancel, then the run deadline, then work.
def advance(state: RunState) -> None:
    if state.run.spec.cancel:
        stopping.stop_everything(state, "Cancelled", "Cancelled", "cancelled by spec.cancel")
        return
    deadline = _deadline(state)
    timed_out = deadline is not None and state.now >= deadline
    if timed_out:
        # The main steps stop; finally steps still run, as cleanup must (as in Tekton).
        stopping.stop(
            state, state.plan.steps, f"the Run exceeded its timeout of {state.plan.timeout}"
        )
    elif deadline is not None:
        state.decision.wake_no_later_than(deadline)

    _advance_list(state, state.main_order)
    if budget.enforce(state):
        return
    main_done = all(state.top(step).phase in TERMINAL_STEP_PHASES for step in state.plan.steps)
    if main_done:
        _advance_list(state, state.finally_order)
        if budget.enforce(state):
            return
    everything = [*state.plan.steps, *(state.plan.finally_ or [])]
    if main_done and all(state.top(s).phase in TERMINAL_STEP_PHASES for s in everything):
        _complete(state, everything, timed_out)
    else:
        _running_phase(state)
    state.write_back()


def _deadline(state: RunState) -> datetime | None:
    if not state.plan.timeout or state.status.started_at is None:
        return None
    return state.status.started_at + parse_duration(state.plan.timeout)


# --- one list of steps (main or finally) ---


def _advance_list(state: RunState, steps: list[Step]) -> None:
    # In graph order, so a step sees what happened upstream in this same pass.
    for step in steps:
        _advance_step(state, step)


def _advance_step(state: RunState, step: Step) -> None:
    entry = state.top(step)
    if entry.phase in TERMINAL_STEP_PHASES:
        return
    if entry.phase == "Pending" or (entry.phase == "Waiting" and not state.started(entry)):
        _try_begin(state, step, entry)
    if entry.phase in (*STARTED_STEP_PHASES, "Waiting") and state.started(entry):
        if step.for_each is not None:
            fanout.advance_items(state, step, entry)
        elif step.child_run is not None:
            children.advance_child(state, step, entry)
        else:
            attempts.advance_attempt(state, step, entry, state.context())


def _try_begin(state: RunState, step: Step, entry: StepStatus) -> None:
    dependencies = [state.top_by_name(name) for name in step.depends_on or []]
    if any(dep.phase not in TERMINAL_STEP_PHASES for dep in dependencies):
        return
    failed = [dep.name for dep in dependencies if did_not_succeed(dep)]
    if failed:
        message = f"skipped: upstream {', '.join(failed)} did not succeed"
        state.end(entry, "Skipped", message, Reason.UPSTREAM_FAILED)
        return
    context = state.context()
    try:
        unmet = _unmet_when(state, step, context)
    except templating.TemplateError as error:
        state.end(entry, "Failed", f"when: {error}")
        return
    if unmet:
        state.end(entry, "Skipped", f"skipped: when {unmet}", Reason.WHEN_NOT_MET)
        return
    if step.approval and step.approval.required and not state.approved(step.name):
        text = step.approval.message or "approve it in spec.approvals"
        state.wait(entry, f"waiting for approval: {text}", Reason.AWAITING_APPROVAL)
        return
    if state.run.spec.suspend:
        state.wait(entry, "the Run is suspended", Reason.SUSPENDED)
        return
    if step.for_each is not None:
        fanout.expand(state, step, entry, context)
    elif step.child_run is not None:
        children.start_child(state, step, entry, context)
    else:
        attempts.start_attempt(state, step, entry, context)


def _unmet_when(state: RunState, step: Step, context: dict[str, Any]) -> str | None:
    for expression in step.when or []:
        value = templating.render(expression.input, context)
        matches = value in expression.values
        if matches != (expression.operator == "In"):
            return f"{value!r} {expression.operator} {expression.values} is false"
    return None


def _complete(state: RunState, everything: list[Step], timed_out: bool) -> None:
    failed = [s.name for s in everything if state.top(s).phase in ("Failed", "Cancelled")]
    outputs, problems = _plan_outputs(state)
    if problems:
        failed.append("outputs")
    state.status.outputs = outputs or None
    if timed_out:
        message = f"the Run exceeded its timeout of {state.plan.timeout}"
        finish(state.status, state.now, "Failed", "Timeout", message)
    elif failed:
        detail = "; ".join(
            f"{name}: {state.top_by_name(name).message}" for name in failed if name != "outputs"
        )
        message = "; ".join(filter(None, [f"failed steps: {detail}" if detail else "", *problems]))
        finish(state.status, state.now, "Failed", "StepsFailed", message)
    else:
        finish(state.status, state.now, "Succeeded", "Succeeded", "all steps succeeded")
    lifetime.schedule_expiry(state)


def _plan_outputs(state: RunState) -> tuple[dict[str, Any], list[str]]:
    """The plan's outputs; one that reads a step which did not succeed (skipped by its
    `when`, say) is null rather than an error, as "the URL, if a PR was opened" means."""
    outputs: dict[str, Any] = {}
    problems = []
    context = state.context()
    for output in state.plan.outputs or []:
        steps = {ref.step for ref in templating.references(output.value) if ref.step}
        if any(state.entries[(name, None)].phase != "Succeeded" for name in steps):
            outputs[output.name] = None
            continue
        try:
            outputs[output.name] = templating.render_value(output.value, context)
        except templating.TemplateError as error:
            problems.append(f"output {output.name}: {error}")
    return outputs, problems


def _running_phase(state: RunState) -> None:
    tops = [e for (_, index), e in state.entries.items() if index is None]
    running = any(e.phase == "Running" for e in tops)
    queued = [e for e in state.entries.values() if e.phase == "Queued"]
    awaiting = [e.name for e in tops if _awaits_approval(e)]
    if awaiting and not running and not queued:
        phase, reason = "WaitingApproval", "WaitingApproval"
        message = f"waiting for approval of step {', '.join(awaiting)}"
    elif queued and not any(_runs_work(e) for e in state.entries.values()):
        # Nothing runs: every started step waits for Kueue. Inadmissible (a queue that does
        # not exist) wins the reason, as it needs a person; Kueue's words are in the message.
        reasons = {e.reason for e in queued}
        phase = "Queued"
        reason = next((r for r in _QUEUE_REASONS if r in reasons), Reason.QUEUED)
        message = "; ".join(f"{step_label(e)}: {e.message}" for e in queued[:3])
    elif state.run.spec.suspend:
        phase, reason, message = "Running", "Suspended", "the Run is suspended"
    else:
        phase, reason, message = "Running", "Running", "the Run is running"
    state.status.phase = phase  # type: ignore[assignment]
    state.status.message = message = bounded(message)
    set_condition(state.status, SUCCEEDED, "Unknown", reason, message, state.now)


_QUEUE_REASONS = (Reason.QUEUE_INADMISSIBLE, Reason.EVICTED, Reason.QUEUED)


def _runs_work(entry: StepStatus) -> bool:
    """A Job or child Run of it runs (a forEach step's own entry is Running while its items
    are, whatever they do)."""
    return entry.phase == "Running" and bool(entry.job_name or entry.child_run_name)


def _awaits_approval(entry: StepStatus) -> bool:
    return entry.phase == "Waiting" and entry.reason == Reason.AWAITING_APPROVAL


def did_not_succeed(entry: StepStatus) -> bool:
    """Failed, cancelled, or skipped because of that: a `when` skip lets dependents run."""
    if entry.phase in ("Failed", "Cancelled"):
        return True
    return entry.phase == "Skipped" and entry.reason == Reason.UPSTREAM_FAILED
