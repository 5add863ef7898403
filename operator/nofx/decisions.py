"""What should happen next for a Run: pure functions over plain data.

`decide(run, world)` takes a Run (spec and last persisted status) and what the operator observed
(Templates, Agents, the Run's Jobs and child Runs, free agent slots, the time) and returns the new
status plus the actions that bring the cluster there. It never talks to a server, so every rule
of a Run's life is unit-tested here. Steps only move forward: Pending → Waiting → Running →
Succeeded | Failed | Skipped | Cancelled (Waiting ↔ Running again between retry attempts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from nofx import templating, validation
from nofx.api.agent import AgentSpec
from nofx.api.common import READY, SUCCEEDED, Condition, parse_duration
from nofx.api.reasons import TERMINAL_STEP_REASONS, Reason
from nofx.api.run import (
    TERMINAL_RUN_PHASES,
    TERMINAL_STEP_PHASES,
    Pinned,
    PinnedAgent,
    PinnedTemplate,
    RunSpec,
    RunStatus,
    StepStatus,
    Usage,
)
from nofx.api.template import Step, TemplateSpec
from nofx.changes import AttemptFinished, step_label
from nofx.jobs import JobObservation, JobRequest, job_name, timeout_seconds

MAX_OUTPUT_BYTES = 4096  # the kubelet's own limit on a termination message
MAX_OUTPUT_KEYS = 32  # status.steps[].outputs maxProperties
MAX_OUTPUT_NESTING = 32  # deeper JSON would make every later reader recurse that deep
MAX_MESSAGE = 4096  # status messages' maxLength
UPSTREAM_FAILED = "skipped: upstream"
MIRROR_WAIT = timedelta(seconds=5)
MINUTE = timedelta(minutes=1)
# A Job without a Pod this long is asked why (the Job controller's FailedCreate Events); one
# that still has none, with an error, Limits.pod_create_timeout after its creation fails the
# attempt.
POD_START_CHECK = timedelta(seconds=5)
# What the steps of a plan may add to a Run's status at most: etcd refuses objects over 1.5 MiB,
# and the spec, the pinned plan and metadata need room too.
MAX_STATUS_STEP_ENTRIES = 1000  # status.steps maxItems
MAX_STATUS_STEP_BYTES = 1024 * 1024
STEP_ENTRY_OVERHEAD = 512  # name, phase, times, job name and a short message of one entry


@dataclass(frozen=True)
class Limits:
    """Bounds set per install (operator flags)."""

    max_depth: int = 5  # how deep child Runs nest; a root Run is at depth 0
    max_runs: int = 500  # child Runs under one root Run, at every depth
    pod_create_timeout: timedelta = timedelta(seconds=60)  # a Job that cannot create its Pod


@dataclass(frozen=True)
class RunView:
    """The Run as the API server stores it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: RunSpec
    status: RunStatus
    depth: int = 0  # 0 for a Run a person made, parent's + 1 for a child Run
    root_uid: str | None = None  # uid of the root of its tree of child Runs (its own for a root)


@dataclass(frozen=True)
class ChildRunObservation:
    name: str
    # The child's status.phase; "Missing" once it is known to be deleted, "Rejected" when the
    # API server refused to create it (message says why).
    phase: str | None
    outputs: dict[str, Any] | None = None
    message: str | None = None


@dataclass(frozen=True)
class World:
    """What the operator observed; everything decide() needs besides the Run itself."""

    now: datetime
    template: TemplateSpec | None = None  # the referenced Template, needed until pinned
    template_invalid: bool = False  # it exists, but its spec does not validate
    agents: dict[str, AgentSpec] = field(default_factory=dict)  # the namespace's, until pinned
    jobs: dict[str, JobObservation] = field(default_factory=dict)  # this Run's, by Job name
    child_runs: dict[str, ChildRunObservation] = field(default_factory=dict)
    free_slots: dict[str, int] = field(default_factory=dict)  # agents with maxConcurrentSteps
    # The namespace's Templates (None: exists but invalid), to find cycles of child Runs.
    templates: Mapping[str, TemplateSpec | None] = field(default_factory=dict)
    limits: Limits = Limits()
    tree_size: int = 0  # child Runs that exist under this Run's root


@dataclass(frozen=True)
class ChildRunRequest:
    name: str
    step: str
    index: int | None
    template: str
    parameters: dict[str, Any]


@dataclass
class Decision:
    status: RunStatus
    create_jobs: list[JobRequest] = field(default_factory=list)
    delete_jobs: list[str] = field(default_factory=list)
    create_child_runs: list[ChildRunRequest] = field(default_factory=list)
    cancel_child_runs: list[str] = field(default_factory=list)
    finished_attempts: list[AttemptFinished] = field(default_factory=list)
    # (kind, name) the Run waits for: "Template", "Agent" (to exist) or "AgentSlot".
    waiting_for: set[tuple[str, str]] = field(default_factory=set)
    wake_at: datetime | None = None
    delete_run: bool = False

    def wake_no_later_than(self, when: datetime) -> None:
        if self.wake_at is None or when < self.wake_at:
            self.wake_at = when


def decide(run: RunView, world: World) -> Decision:
    status = run.status.model_copy(deep=True)
    decision = Decision(status)
    status.observed_generation = run.generation
    # Deciding works again: a ReconcileError shown earlier is over.
    status.conditions = [c for c in status.conditions or [] if c.type != RECONCILE_ERROR] or None
    problem = inconsistency(run.status)
    if problem is not None:
        abort(decision, world.now, Reason.INCONSISTENT_STATUS, problem)
        _expire(run, world, decision)
        return decision
    if status.phase in TERMINAL_RUN_PHASES:
        _expire(run, world, decision)
        return decision
    if status.pinned is None and not _pin(run, world, decision):
        if run.spec.cancel and status.phase == "Pending":
            decision.waiting_for.clear()
            _finish(status, world.now, "Cancelled", "Cancelled", "cancelled before it started")
            _expire(run, world, decision)
        return decision
    try:
        progress = _Progress(run, world, decision)
    except ValidationError as error:
        message = f"status.pinned no longer validates, so the Run cannot go on: {error}"
        abort(decision, world.now, Reason.INCONSISTENT_STATUS, message)
        return decision
    progress.advance()
    return decision


RECONCILE_ERROR = "ReconcileError"  # condition type: the operator keeps failing on this Run
_UNFINISHED_STEP_PHASES = ("Pending", "Waiting", "Running")


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
        if entry.phase == "Running":
            if entry.job_name and entry.job_name not in decision.delete_jobs:
                decision.delete_jobs.append(entry.job_name)
            if entry.child_run_name:
                decision.cancel_child_runs.append(entry.child_run_name)
            _end_entry(entry, now, "Cancelled", stopped)
        elif entry.phase in ("Pending", "Waiting"):
            _end_entry(entry, now, "Skipped", stopped)
    decision.create_jobs.clear()
    decision.create_child_runs.clear()
    decision.waiting_for.clear()
    _finish(status, now, "Failed", reason, message)


def abort_run(run: RunView, now: datetime, reason: Reason, message: str) -> Decision:
    """The Decision that fails a Run for a reason found outside decide() (the API server
    refused its status, or reconciling it keeps failing)."""
    decision = Decision(run.status.model_copy(deep=True))
    decision.status.observed_generation = run.generation
    abort(decision, now, reason, message)
    return decision


def reconcile_error(status: RunStatus, now: datetime, reason: str, message: str) -> RunStatus:
    """The status with a ReconcileError condition: the operator keeps retrying this Run."""
    shown = status.model_copy(deep=True)
    _condition(shown, RECONCILE_ERROR, "True", reason, message, now)
    return shown


# --- before the start: resolve and pin ------------------------------------------------------


def _pin(run: RunView, world: World, decision: Decision) -> bool:
    """Resolves the plan, its parameters and its Agents once; the snapshot is all a Run ever
    runs with. Returns whether the Run could start."""
    status, spec = decision.status, run.spec
    template_name = spec.template_ref.name if spec.template_ref else None
    plan = spec.inline_template() if template_name is None else world.template
    if plan is None:
        decision.waiting_for.add(("Template", str(template_name)))
        if world.template_invalid:
            message = f"Template {template_name} is invalid (see its Ready condition)"
            _pending(status, world.now, "TemplateInvalid", message)
        else:
            _pending(status, world.now, "TemplateMissing", f"Template {template_name} not found")
        return False
    if spec.timeout:
        plan = plan.model_copy(update={"timeout": spec.timeout})

    where = "spec.parameters" if template_name else "spec.parameterDefinitions"
    problems = validation.validate_plan(plan, where)
    parameters, parameter_problems = validation.resolve_parameters(
        plan.parameters or [], spec.parameters or {}
    )
    problems += parameter_problems + status_bound_problems(plan)
    cycle = template_cycle(template_name, plan, world.templates)
    if cycle:
        problems.append(f"child Runs would start each other without end: {' → '.join(cycle)}")
    if problems:
        _finish(status, world.now, "Failed", "InvalidPlan", "; ".join(problems))
        _condition(status, READY, "False", "InvalidPlan", "; ".join(problems), world.now)
        return False

    for child_template, step_name in _child_templates(plan).items():
        if child_template not in world.templates or world.templates[child_template] is None:
            decision.waiting_for.add(("Template", child_template))
            state = "invalid" if child_template in world.templates else "not found"
            reason = "TemplateInvalid" if child_template in world.templates else "TemplateMissing"
            message = f"Template {child_template} of step {step_name} (childRun) {state}"
            _pending(status, world.now, reason, message)
            return False

    chosen, missing = _choose_agents(plan, world.agents)
    if missing:
        for name in missing:
            decision.waiting_for.add(("Agent", name))
        _pending(status, world.now, "AgentMissing", "; ".join(missing.values()))
        return False

    status.pinned = Pinned(
        template=PinnedTemplate(
            name=template_name, spec_hash=validation.spec_hash(plan.to_dict()), spec=plan.to_dict()
        ),
        agents={
            name: PinnedAgent(spec_hash=validation.spec_hash(agent.to_dict()), spec=agent.to_dict())
            for name, agent in sorted(chosen.items())
        }
        or None,
        parameters=parameters or None,
    )
    status.started_at = world.now
    status.phase = "Running"
    status.message = None
    status.steps = [
        StepStatus(name=step.name, phase="Pending")
        for step in [*plan.steps, *(plan.finally_ or [])]
    ]
    status.usage = Usage()
    _condition(status, READY, "True", "Started", "template and agents pinned", world.now)
    _condition(status, SUCCEEDED, "Unknown", "Running", "the Run is running", world.now)
    return True


def _child_templates(plan: TemplateSpec) -> dict[str, str]:
    """Templates the plan starts as child Runs → the first step that starts each."""
    found: dict[str, str] = {}
    for step in [*plan.steps, *(plan.finally_ or [])]:
        if step.child_run is not None:
            found.setdefault(step.child_run.template_ref.name, step.name)
    return found


def template_cycle(
    name: str | None, plan: TemplateSpec, templates: Mapping[str, TemplateSpec | None]
) -> list[str] | None:
    """A chain of Templates that start each other as child Runs, from this plan back to a
    Template already on the chain; None if there is none. Templates that do not exist yet
    end a chain (they are waited for)."""
    start = name or "(inline plan)"
    finished: set[str] = set()
    # Depth-first without recursion: (template, its children not yet visited).
    path: list[tuple[str, list[str]]] = [(start, sorted(_child_templates(plan)))]
    while path:
        current, children = path[-1]
        if not children:
            finished.add(current)
            path.pop()
            continue
        child = children.pop()
        on_path = [entry[0] for entry in path]
        if child in on_path:
            return [*on_path[on_path.index(child) :], child]
        spec = templates.get(child)
        if child not in finished and spec is not None:
            path.append((child, sorted(_child_templates(spec))))
    return None


def status_bound_problems(plan: TemplateSpec) -> list[str]:
    """What a plan could write into a Run's status at worst, against what a status holds."""
    entries = size = 0
    for step in [*plan.steps, *(plan.finally_ or [])]:
        items = validation.MAX_FOR_EACH_ITEMS if step.for_each else 0
        entries += 1 + items
        # Every entry may report full outputs; a forEach step's own entry joins its items'.
        size += (1 + items) * (STEP_ENTRY_OVERHEAD + MAX_OUTPUT_BYTES) + items * MAX_OUTPUT_BYTES
    problems = []
    if entries > MAX_STATUS_STEP_ENTRIES:
        problems.append(
            f"the plan can produce {entries} status entries (one per step, and up to "
            f"{validation.MAX_FOR_EACH_ITEMS} per forEach step); a Run holds at most "
            f"{MAX_STATUS_STEP_ENTRIES}: use fewer forEach steps, or move them into child Runs"
        )
    if size > MAX_STATUS_STEP_BYTES:
        problems.append(
            f"the plan's steps can report {size / 2**20:.1f} MiB of outputs ({MAX_OUTPUT_BYTES} "
            f"bytes per attempt, twice for forEach items); a Run's status holds at most "
            f"{MAX_STATUS_STEP_BYTES / 2**20:.0f} MiB: use fewer forEach steps, or move them "
            "into child Runs"
        )
    return problems


def agent_for(step: Step, agents: dict[str, AgentSpec]) -> str | None:
    """The Agent a step runs on: by name, or the first by name that has all required skills."""
    if step.agent_ref:
        return step.agent_ref.name if step.agent_ref.name in agents else None
    if step.agent_selector:
        wanted = set(step.agent_selector.skills)
        for name in sorted(agents):
            if wanted <= set(agents[name].skills or []):
                return name
    return None


def _choose_agents(
    plan: TemplateSpec, agents: dict[str, AgentSpec]
) -> tuple[dict[str, AgentSpec], dict[str, str]]:
    chosen: dict[str, AgentSpec] = {}
    missing: dict[str, str] = {}
    for step in [*plan.steps, *(plan.finally_ or [])]:
        if step.child_run:
            continue
        name = agent_for(step, agents)
        if name is not None:
            chosen[name] = agents[name]
        elif step.agent_ref:
            missing[step.agent_ref.name] = f"Agent {step.agent_ref.name} not found"
        elif step.agent_selector:
            skills = ",".join(step.agent_selector.skills)
            missing[f"skills:{skills}"] = f"no Agent has the skills {skills} (step {step.name})"
    return chosen, missing


def _pending(status: RunStatus, now: datetime, reason: str, message: str) -> None:
    status.phase = "Pending"
    status.message = message = _bounded(message)
    _condition(status, READY, "False", reason, message, now)
    _condition(status, SUCCEEDED, "Unknown", reason, message, now)


# --- after the end: time to live ------------------------------------------------------------


def _expire(run: RunView, world: World, decision: Decision) -> None:
    ttl = run.spec.ttl_seconds_after_finished
    finished = decision.status.finished_at
    if ttl is None or finished is None:
        return
    deadline = finished + timedelta(seconds=ttl)
    outbox = decision.status.audit
    if world.now >= deadline and outbox is not None and outbox.pending:
        # Deleting now would lose what the Postgres mirror has not stored yet.
        decision.wake_no_later_than(world.now + MIRROR_WAIT)
    elif world.now >= deadline:
        decision.delete_run = True
    else:
        decision.wake_no_later_than(deadline)


# --- while running --------------------------------------------------------------------------


class _Progress:
    """Moves every step of a pinned Run forward as far as the observations allow."""

    def __init__(self, run: RunView, world: World, decision: Decision) -> None:
        self.run, self.world, self.decision = run, world, decision
        self.status = decision.status
        self.now = world.now
        pinned = self.status.pinned
        assert pinned is not None and pinned.template is not None
        self.plan = TemplateSpec.model_validate(pinned.template.spec)
        self.agents = {
            name: AgentSpec.model_validate(agent.spec)
            for name, agent in (pinned.agents or {}).items()
        }
        self.parameters = pinned.parameters or {}
        self.entries: dict[tuple[str, int | None], StepStatus] = {
            (entry.name, entry.index): entry for entry in self.status.steps or []
        }
        self.free_slots = dict(world.free_slots)
        self.child_runs_left = world.limits.max_runs - world.tree_size
        self.for_each_steps = {
            step.name for step in [*self.plan.steps, *(self.plan.finally_ or [])] if step.for_each
        }

    # The order of checks is the order of precedence: cancel, then the run deadline, then work.
    def advance(self) -> None:
        if self.run.spec.cancel:
            self._stop_everything("Cancelled", "Cancelled", "cancelled by spec.cancel")
            return
        deadline = self._deadline()
        timed_out = deadline is not None and self.now >= deadline
        if timed_out:
            # The main steps stop; finally steps still run, as cleanup must (as in Tekton).
            self._stop(self.plan.steps, f"the Run exceeded its timeout of {self.plan.timeout}")
        elif deadline is not None:
            self.decision.wake_no_later_than(deadline)

        self._advance_list(self.plan.steps)
        main_done = all(self._top(step).phase in TERMINAL_STEP_PHASES for step in self.plan.steps)
        if main_done:
            self._advance_list(self.plan.finally_ or [])
        everything = [*self.plan.steps, *(self.plan.finally_ or [])]
        if main_done and all(self._top(s).phase in TERMINAL_STEP_PHASES for s in everything):
            self._complete(everything, timed_out)
        else:
            self._running_phase()
        self._write_back()

    def _deadline(self) -> datetime | None:
        if not self.plan.timeout or self.status.started_at is None:
            return None
        return self.status.started_at + parse_duration(self.plan.timeout)

    # --- one list of steps (main or finally) ---

    def _advance_list(self, steps: list[Step]) -> None:
        # Declaration order is not dependency order; repeat until nothing changes so that a
        # step whose upstream became Skipped in this pass is handled in the same decision.
        while True:
            before = [(e.phase, e.attempts) for e in self.entries.values()]
            count = len(self.entries)
            for step in steps:
                self._advance_step(step)
            if count == len(self.entries) and before == [
                (e.phase, e.attempts) for e in self.entries.values()
            ]:
                return

    def _top(self, step: Step) -> StepStatus:
        key = (step.name, None)
        if key not in self.entries:
            self.entries[key] = StepStatus(name=step.name, phase="Pending")
        return self.entries[key]

    def _advance_step(self, step: Step) -> None:
        entry = self._top(step)
        if entry.phase in TERMINAL_STEP_PHASES:
            return
        if entry.phase == "Pending" or (entry.phase == "Waiting" and not self._started(entry)):
            self._try_begin(step, entry)
        if entry.phase in ("Running", "Waiting") and self._started(entry):
            if step.for_each is not None:
                self._advance_items(step, entry)
            elif step.child_run is not None:
                self._advance_child(step, entry)
            else:
                self._advance_attempt(step, entry, self._context())

    def _started(self, entry: StepStatus) -> bool:
        return bool(entry.attempts) or entry.child_run_name is not None or self._has_items(entry)

    def _has_items(self, entry: StepStatus) -> bool:
        return any(name == entry.name and index is not None for name, index in self.entries)

    def _try_begin(self, step: Step, entry: StepStatus) -> None:
        dependencies = [self._top_by_name(name) for name in step.depends_on or []]
        if any(dep.phase not in TERMINAL_STEP_PHASES for dep in dependencies):
            return
        failed = [dep.name for dep in dependencies if _did_not_succeed(dep)]
        if failed:
            self._end(entry, "Skipped", f"{UPSTREAM_FAILED} {', '.join(failed)} did not succeed")
            return
        context = self._context()
        try:
            unmet = self._unmet_when(step, context)
        except templating.TemplateError as error:
            self._end(entry, "Failed", f"when: {error}")
            return
        if unmet:
            self._end(entry, "Skipped", f"skipped: when {unmet}")
            return
        if step.approval and step.approval.required and not self._approved(step.name):
            text = step.approval.message or "approve it in spec.approvals"
            self._wait(entry, f"waiting for approval: {text}")
            return
        if self.run.spec.suspend:
            self._wait(entry, "the Run is suspended")
            return
        if step.for_each is not None:
            self._expand(step, entry, context)
        elif step.child_run is not None:
            self._start_child(step, entry, context)
        else:
            self._start_attempt(step, entry, context)

    def _top_by_name(self, name: str) -> StepStatus:
        return self.entries[(name, None)]

    def _approved(self, step_name: str) -> bool:
        return any(approval.step == step_name for approval in self.run.spec.approvals or [])

    def _unmet_when(self, step: Step, context: dict[str, Any]) -> str | None:
        for expression in step.when or []:
            value = templating.render(expression.input, context)
            matches = value in expression.values
            if matches != (expression.operator == "In"):
                return f"{value!r} {expression.operator} {expression.values} is false"
        return None

    def _context(self, item: Any = None, index: int | None = None) -> dict[str, Any]:
        steps: dict[str, Any] = {
            name: {"outputs": entry.outputs or {}}
            for (name, entry_index), entry in self.entries.items()
            if entry_index is None and entry.phase == "Succeeded"
        }
        for name in self.for_each_steps & steps.keys():
            if not self._has_items(self.entries[(name, None)]):
                steps[name] = {"outputs": _EMPTY_JOIN}
        context: dict[str, Any] = {"params": self.parameters, "steps": steps}
        if index is not None:
            context["item"], context["index"] = item, index
        return context

    # --- a single attempt-based step (or one forEach item) ---

    def _start_attempt(
        self, step: Step, entry: StepStatus, context: dict[str, Any], item: Any = None
    ) -> None:
        if self.run.spec.suspend:
            self._wait(entry, "the Run is suspended")
            return
        agent_name = agent_for(step, self.agents)
        assert agent_name is not None, "pinning chose an agent for every step"
        agent = self.agents[agent_name]
        if agent_name in self.free_slots:
            if self.free_slots[agent_name] <= 0:
                self.decision.waiting_for.add(("AgentSlot", agent_name))
                limit = agent.max_concurrent_steps
                self._wait(
                    entry,
                    f"waiting for a free slot of Agent {agent_name} (maxConcurrentSteps {limit})",
                )
                return
            self.free_slots[agent_name] -= 1
        try:
            inputs = {
                key: templating.render(value, context) for key, value in (step.inputs or {}).items()
            }
        except templating.TemplateError as error:
            self._end(entry, "Failed", f"inputs: {error}")
            return
        attempt = (entry.attempts or 0) + 1
        name = job_name(self.run.name, self.run.uid, step.name, entry.index, attempt)
        # A Job seen already was created before a crash that kept this status from being
        # written: it is this attempt, to be read, not created again.
        if name not in self.world.jobs:
            self.decision.create_jobs.append(
                JobRequest(
                    step=step.name,
                    index=entry.index,
                    attempt=attempt,
                    agent_name=agent_name,
                    agent=agent,
                    inputs=inputs,
                    item=item,
                    timeout_seconds=timeout_seconds(step.timeout),
                    job_name=name,
                )
            )
        # A look at the Job soon: one that cannot create its Pod sends no event that says so.
        self.decision.wake_no_later_than(self.now + POD_START_CHECK)
        entry.phase = "Running"
        entry.attempts = attempt
        entry.job_name = name
        entry.started_at = entry.started_at or self.now
        entry.next_attempt_at = None
        entry.message = f"attempt {attempt} running as Job {name}"

    def _advance_attempt(
        self, step: Step, entry: StepStatus, context: dict[str, Any], item: Any = None
    ) -> None:
        if entry.phase == "Waiting":
            if entry.next_attempt_at is not None and self.now < entry.next_attempt_at:
                self.decision.wake_no_later_than(entry.next_attempt_at)
                return
            self._start_attempt(step, entry, context, item)
            return
        observation = self.world.jobs.get(entry.job_name or "")
        if observation is None:
            return
        attempt = entry.attempts or 0
        if observation.state == "Active":
            failure = self._pod_start_failure(entry, observation)
            if failure is None:
                return
            outputs: dict[str, Any] = {}
            reason: Reason | None = Reason.POD_CREATE_FAILED
            self.decision.delete_jobs.append(observation.name)  # else it keeps trying
        else:
            outputs, failure, reason = _outcome(observation, step.timeout)
        self._meter(step, entry, observation, "Succeeded" if failure is None else "Failed")
        if failure is None:
            entry.outputs = outputs
            self._end(entry, "Succeeded", f"attempt {attempt} succeeded")
            return
        limit = step.retries.limit if step.retries else 0
        if attempt <= limit and reason not in TERMINAL_STEP_REASONS:
            assert step.retries is not None
            backoff = step.retries.backoff
            delay = parse_duration(backoff.duration) * (backoff.factor ** (attempt - 1))
            delay = min(delay, parse_duration(backoff.max_duration))
            entry.phase = "Waiting"
            entry.next_attempt_at = self.now + delay
            entry.message = _bounded(
                f"attempt {attempt} failed: {failure}; retry {attempt} of {limit} "
                f"in {delay.total_seconds():g}s"
            )
            self.decision.wake_no_later_than(entry.next_attempt_at)
            return
        tries = f" after {attempt} attempts" if attempt > 1 else ""
        self._end(entry, "Failed", f"{failure}{tries}", reason)

    def _pod_start_failure(self, entry: StepStatus, job: JobObservation) -> str | None:
        """Watches a Job that has no Pod yet: says why in the step's message, and gives up
        (returns why) once it had an error for too long."""
        if job.pods_started or job.created_at is None:
            return None
        age = self.now - job.created_at
        if age < POD_START_CHECK:
            self.decision.wake_no_later_than(job.created_at + POD_START_CHECK)
            return None
        if job.pod_create_error is None:
            # Only slow (a busy Job controller or scheduler): look again, less and less often.
            self.decision.wake_no_later_than(self.now + min(max(age / 2, POD_START_CHECK), MINUTE))
            return None
        problem = f"Job {job.name} cannot create its Pod: {job.pod_create_error}"
        timeout = self.world.limits.pod_create_timeout
        if age >= timeout:
            return f"{problem} (for {age.total_seconds():.0f}s)"
        entry.message = _bounded(f"attempt {entry.attempts} waits: {problem}")
        self.decision.wake_no_later_than(job.created_at + timeout)
        return None

    def _meter(
        self, step: Step, entry: StepStatus, observation: JobObservation, outcome: str
    ) -> None:
        agent_name = agent_for(step, self.agents) or ""
        agent = self.agents.get(agent_name)
        pricing = agent.pricing if agent else None
        requests = agent.resources.requests if agent and agent.resources else None
        started, finished = observation.started_at, observation.finished_at or self.now
        wall = max(0.0, (finished - started).total_seconds()) if started else 0.0
        per_hour = Decimal(pricing.per_hour) if pricing else Decimal(0)
        cost = (Decimal(str(wall)) * per_hour / 3600).quantize(Decimal("0.000000001"))
        currency = pricing.currency if pricing else "USD"
        usage = self.status.usage or Usage()
        usage.wall_seconds = round(usage.wall_seconds + wall, 3)
        usage.cost = str((Decimal(usage.cost) + cost).normalize())
        if "E" in usage.cost:  # normalize() writes 0E-9 for zero
            usage.cost = format(Decimal(usage.cost), "f")
        usage.currency = currency
        self.status.usage = usage
        self.decision.finished_attempts.append(
            AttemptFinished(
                step=step.name,
                index=entry.index,
                attempt=entry.attempts or 0,
                job_name=observation.name,
                agent=agent_name,
                outcome=outcome,
                wall_seconds=wall,
                cost=cost,
                currency=currency,
                started_at=started,
                finished_at=finished,
                cpu_request=requests.cpu if requests else None,
                memory_request=requests.memory if requests else None,
            )
        )

    # --- forEach: one entry per item, then a join ---

    def _expand(self, step: Step, entry: StepStatus, context: dict[str, Any]) -> None:
        items, problems = validation.expand_for_each(step, context)
        if problems:
            self._end(entry, "Failed", "; ".join(problems))
            return
        if not items:
            entry.outputs = {}
            self._end(entry, "Succeeded", "forEach over an empty list")
            return
        for index, item in enumerate(items):
            self.entries[(step.name, index)] = StepStatus(
                name=step.name, index=index, item=item, phase="Pending"
            )
        entry.phase = "Running"
        entry.started_at = self.now
        entry.message = f"0/{len(items)} items finished"

    def _advance_items(self, step: Step, entry: StepStatus) -> None:
        items = sorted(
            (
                e
                for (name, index), e in self.entries.items()
                if name == step.name and index is not None
            ),
            key=lambda e: e.index or 0,
        )
        # First learn what finished, then start items while maxParallel allows; an item waiting
        # for its retry starts again only when there is room, like a new one.
        for item in items:
            if item.phase == "Running":
                self._advance_item(step, item)
        running = sum(1 for item in items if item.phase == "Running")
        for item in items:
            if item.phase not in ("Pending", "Waiting"):
                continue
            if item.next_attempt_at is not None and self.now < item.next_attempt_at:
                self.decision.wake_no_later_than(item.next_attempt_at)
                continue
            if step.max_parallel is not None and running >= step.max_parallel:
                continue
            self._advance_item(step, item)
            running += item.phase == "Running"
        finished = [item for item in items if item.phase in TERMINAL_STEP_PHASES]
        entry.message = f"{len(finished)}/{len(items)} items finished"
        if len(finished) < len(items):
            return
        failed = [str(item.index) for item in items if item.phase != "Succeeded"]
        entry.outputs = _join_outputs([item.outputs or {} for item in items])
        if failed:
            self._end(entry, "Failed", f"items {', '.join(failed)} failed")
        else:
            self._end(entry, "Succeeded", f"all {len(items)} items succeeded")

    def _advance_item(self, step: Step, item: StepStatus) -> None:
        context = self._context(item.item, item.index)
        if step.child_run is not None:
            if item.child_run_name is None:
                self._start_child(step, item, context)
            else:
                self._advance_child(step, item)
        elif item.attempts:
            self._advance_attempt(step, item, context, item.item)
        else:
            self._start_attempt(step, item, context, item.item)

    # --- childRun: another Template as a child Run ---

    def _start_child(self, step: Step, entry: StepStatus, context: dict[str, Any]) -> None:
        assert step.child_run is not None
        try:
            parameters = {
                key: templating.render(value, context) if isinstance(value, str) else value
                for key, value in (step.child_run.parameters or {}).items()
            }
        except templating.TemplateError as error:
            self._end(entry, "Failed", f"childRun parameters: {error}")
            return
        name = child_run_name(self.run.name, self.run.uid, step.name, entry.index)
        limits = self.world.limits
        if self.run.depth + 1 > limits.max_depth:
            message = (
                f"child Run {name} would be at depth {self.run.depth + 1}; the operator allows "
                f"{limits.max_depth} (--max-child-run-depth)"
            )
            self._end(entry, "Failed", message, Reason.CHILD_RUN_LIMIT)
            return
        if self.child_runs_left <= 0:
            message = (
                f"the tree of this Run's root already holds {limits.max_runs} child Runs, the "
                "operator's limit (--max-child-runs)"
            )
            self._end(entry, "Failed", message, Reason.CHILD_RUN_LIMIT)
            return
        self.child_runs_left -= 1
        self.decision.create_child_runs.append(
            ChildRunRequest(
                name=name,
                step=step.name,
                index=entry.index,
                template=step.child_run.template_ref.name,
                parameters=parameters,
            )
        )
        entry.phase = "Running"
        entry.child_run_name = name
        entry.started_at = self.now
        entry.message = f"child Run {name} running"

    def _advance_child(self, step: Step, entry: StepStatus) -> None:
        child = self.world.child_runs.get(entry.child_run_name or "")
        if child is not None and child.phase == "Missing":
            self._end(entry, "Failed", f"child Run {child.name} was deleted before it finished")
            return
        if child is not None and child.phase == "Rejected":
            message = f"the API server refused child Run {child.name}: {child.message}"
            self._end(entry, "Failed", message, Reason.CHILD_RUN_REJECTED)
            return
        if child is None or child.phase not in TERMINAL_RUN_PHASES:
            return
        if child.phase == "Succeeded":
            entry.outputs = child.outputs or {}
            self._end(entry, "Succeeded", f"child Run {child.name} succeeded")
        else:
            detail = f": {child.message}" if child.message else ""
            self._end(entry, "Failed", f"child Run {child.name} {child.phase.lower()}{detail}")

    # --- phase changes ---

    def _wait(self, entry: StepStatus, message: str) -> None:
        entry.phase = "Waiting"
        entry.message = _bounded(message)

    def _end(
        self, entry: StepStatus, phase: str, message: str, reason: Reason | None = None
    ) -> None:
        _end_entry(entry, self.now, phase, message, reason)

    def _stop_everything(self, phase: str, reason: str, message: str) -> None:
        self._stop([*self.plan.steps, *(self.plan.finally_ or [])], message)
        self._write_back()
        _finish(self.status, self.now, phase, reason, message)
        self._schedule_expiry()

    def _stop(self, steps: list[Step], message: str) -> None:
        """Running work of these steps is cancelled, work not started is skipped."""
        names = {step.name for step in steps}
        for (name, _), entry in self.entries.items():
            if name not in names:
                continue
            if entry.phase == "Running":
                if entry.job_name and entry.job_name not in self.decision.delete_jobs:
                    self.decision.delete_jobs.append(entry.job_name)
                if entry.child_run_name:
                    self.decision.cancel_child_runs.append(entry.child_run_name)
                self._end(entry, "Cancelled", message)
            elif entry.phase in ("Pending", "Waiting"):
                self._end(entry, "Skipped", message)

    def _complete(self, everything: list[Step], timed_out: bool) -> None:
        failed = [s.name for s in everything if self._top(s).phase in ("Failed", "Cancelled")]
        outputs, problems = self._plan_outputs()
        if problems:
            failed.append("outputs")
        self.status.outputs = outputs or None
        if timed_out:
            message = f"the Run exceeded its timeout of {self.plan.timeout}"
            _finish(self.status, self.now, "Failed", "Timeout", message)
        elif failed:
            detail = "; ".join(
                f"{name}: {self._top_by_name(name).message}" for name in failed if name != "outputs"
            )
            message = "; ".join(
                filter(None, [f"failed steps: {detail}" if detail else "", *problems])
            )
            _finish(self.status, self.now, "Failed", "StepsFailed", message)
        else:
            _finish(self.status, self.now, "Succeeded", "Succeeded", "all steps succeeded")
        self._schedule_expiry()

    def _plan_outputs(self) -> tuple[dict[str, Any], list[str]]:
        """The plan's outputs; one that reads a step which did not succeed (skipped by its
        `when`, say) is null rather than an error, as "the URL, if a PR was opened" means."""
        outputs: dict[str, Any] = {}
        problems = []
        context = self._context()
        for output in self.plan.outputs or []:
            steps = {ref.step for ref in templating.references(output.value) if ref.step}
            if any(self.entries[(name, None)].phase != "Succeeded" for name in steps):
                outputs[output.name] = None
                continue
            try:
                outputs[output.name] = templating.render_value(output.value, context)
            except templating.TemplateError as error:
                problems.append(f"output {output.name}: {error}")
        return outputs, problems

    def _schedule_expiry(self) -> None:
        ttl = self.run.spec.ttl_seconds_after_finished
        if ttl is not None and self.status.finished_at is not None:
            self.decision.wake_no_later_than(self.status.finished_at + timedelta(seconds=ttl))

    def _running_phase(self) -> None:
        tops = [e for (_, index), e in self.entries.items() if index is None]
        running = any(e.phase == "Running" for e in tops)
        waiting_approval = any(
            e.phase == "Waiting" and (e.message or "").startswith("waiting for approval")
            for e in tops
        )
        if waiting_approval and not running:
            phase, reason, message = "WaitingApproval", "WaitingApproval", self._approval_message()
        elif self.run.spec.suspend:
            phase, reason, message = "Running", "Suspended", "the Run is suspended"
        else:
            phase, reason, message = "Running", "Running", "the Run is running"
        self.status.phase = phase  # type: ignore[assignment]
        self.status.message = message = _bounded(message)
        _condition(self.status, SUCCEEDED, "Unknown", reason, message, self.now)

    def _approval_message(self) -> str:
        waiting = [
            e.name
            for (_, index), e in self.entries.items()
            if index is None
            and e.phase == "Waiting"
            and (e.message or "").startswith("waiting for approval")
        ]
        return f"waiting for approval of step {', '.join(waiting)}"

    def _write_back(self) -> None:
        order = {
            (s.name, None): i for i, s in enumerate([*self.plan.steps, *(self.plan.finally_ or [])])
        }

        def position(key: tuple[str, int | None]) -> tuple[int, int]:
            name, index = key
            return order.get((name, None), len(order)), -1 if index is None else index

        self.status.steps = [self.entries[key] for key in sorted(self.entries, key=position)]
        tops = [e for (_, index), e in self.entries.items() if index is None]
        done = sum(1 for e in tops if e.phase in TERMINAL_STEP_PHASES)
        self.status.progress = f"{done}/{len(tops)}"


def _did_not_succeed(entry: StepStatus) -> bool:
    """Failed, cancelled, or skipped because of that: a `when` skip lets dependents run."""
    if entry.phase in ("Failed", "Cancelled"):
        return True
    return entry.phase == "Skipped" and (entry.message or "").startswith(UPSTREAM_FAILED)


def _end_entry(
    entry: StepStatus, now: datetime, phase: str, message: str, reason: Reason | None = None
) -> None:
    entry.phase = phase  # type: ignore[assignment]
    entry.reason = reason
    entry.message = _bounded(message)
    entry.finished_at = now
    entry.next_attempt_at = None


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


class _EmptyJoin(Mapping[str, Any]):
    """Outputs of a forEach step over no items: every key is an empty list."""

    def __getitem__(self, key: str) -> list[Any]:
        return []

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_EMPTY_JOIN = _EmptyJoin()


def _join_outputs(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of a forEach step: every key any item reported, as a list with one entry
    per item (null where an item did not report it)."""
    keys = sorted({key for result in results for key in result})
    return {key: [result.get(key) for result in results] for key in keys}


def child_run_name(parent: str, parent_uid: str, step: str, index: int | None) -> str:
    """Deterministic like Job names, so a restarted operator never starts a child twice."""
    return job_name(parent, parent_uid, step, index, 0).rsplit("-", 1)[0]


def _outcome(
    observation: JobObservation, timeout: str | None
) -> tuple[dict[str, Any], str | None, Reason | None]:
    """(outputs, None, None) for a good attempt, or ({}, why it failed, typed reason)."""
    if observation.state == "Missing":
        return {}, f"Job {observation.name} disappeared before it finished", None
    if observation.reason == Reason.JOB_REJECTED:
        message = f"the API server refused Job {observation.name}: {observation.message}"
        return {}, message, Reason.JOB_REJECTED
    if observation.state == "Failed":
        if observation.reason == "DeadlineExceeded":
            return {}, f"timed out after {timeout}", None
        detail = (
            f"exit code {observation.exit_code}"
            if observation.exit_code is not None
            else (observation.reason or "failed")
        )
        message = (observation.termination_message or observation.message or "").strip()
        return {}, f"{detail}: {message[:500]}" if message else detail, None
    if not observation.pod_read:
        # Outputs live in the Pod's termination message; without it they are unknown.
        message = f"Job {observation.name} succeeded, but its Pod is gone with its outputs"
        return {}, message, Reason.OUTPUTS_LOST
    outputs, problem = parse_outputs(observation.termination_message)
    return outputs, problem, None


def parse_outputs(message: str | None) -> tuple[dict[str, Any], str | None]:
    """A step's outputs are its termination message: empty, or a JSON object."""
    text = (message or "").strip()
    if not text:
        return {}, None
    if len(text.encode()) > MAX_OUTPUT_BYTES:
        return {}, f"outputs are larger than {MAX_OUTPUT_BYTES} bytes"
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as error:
        return (
            {},
            f"outputs are not valid JSON ({error.msg} at character {error.pos}): {text[:200]}",
        )
    except RecursionError:  # nested deeper than the parser goes
        return {}, f"outputs are nested more than {MAX_OUTPUT_NESTING} levels deep"
    if _nesting(outputs) > MAX_OUTPUT_NESTING:
        return {}, f"outputs are nested more than {MAX_OUTPUT_NESTING} levels deep"
    if not isinstance(outputs, dict):
        return {}, f"outputs must be a JSON object, got {type(outputs).__name__}: {text[:200]}"
    if len(outputs) > MAX_OUTPUT_KEYS:
        return {}, f"outputs have {len(outputs)} keys, at most {MAX_OUTPUT_KEYS} are allowed"
    return outputs, None


def _nesting(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        current, depth = stack.pop()
        if isinstance(current, dict):
            current = list(current.values())
        if isinstance(current, list):
            deepest = max(deepest, depth + 1)
            stack.extend((child, depth + 1) for child in current)
    return deepest


def _finish(status: RunStatus, now: datetime, phase: str, reason: str, message: str) -> None:
    status.phase = phase  # type: ignore[assignment]
    status.finished_at = now
    status.message = message = _bounded(message)
    _condition(status, SUCCEEDED, "True" if phase == "Succeeded" else "False", reason, message, now)


def _condition(
    status: RunStatus, kind: str, value: str, reason: str, message: str, now: datetime
) -> None:
    """Sets one condition; lastTransitionTime moves only when its status changes."""
    conditions = [c for c in status.conditions or [] if c.type != kind]
    previous = next((c for c in status.conditions or [] if c.type == kind), None)
    changed_at = previous.last_transition_time if previous and previous.status == value else now
    conditions.append(
        Condition(
            type=kind,
            status=value,  # type: ignore[arg-type]
            reason=reason,
            message=message[:32768],
            last_transition_time=changed_at,
            observed_generation=status.observed_generation,
        )
    )
    status.conditions = sorted(conditions, key=lambda c: c.type)
