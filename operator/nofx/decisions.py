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

from nofx import templating, validation
from nofx.api.agent import AgentSpec
from nofx.api.common import READY, SUCCEEDED, Condition, parse_duration
from nofx.api.run import (
    Pinned,
    PinnedAgent,
    PinnedTemplate,
    RunSpec,
    RunStatus,
    StepStatus,
    Usage,
)
from nofx.api.template import Step, TemplateSpec
from nofx.jobs import JobObservation, JobRequest, job_name, timeout_seconds

TERMINAL_RUN_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
TERMINAL_STEP_PHASES = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})
MAX_OUTPUT_BYTES = 4096  # the kubelet's own limit on a termination message
MAX_OUTPUT_KEYS = 32  # status.steps[].outputs maxProperties
MAX_MESSAGE = 4096  # status messages' maxLength
UPSTREAM_FAILED = "skipped: upstream"
MIRROR_WAIT = timedelta(seconds=5)


@dataclass(frozen=True)
class RunView:
    """The Run as the API server stores it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: RunSpec
    status: RunStatus


@dataclass(frozen=True)
class ChildRunObservation:
    name: str
    phase: str | None  # the child's status.phase, or "Missing" once it is known to be deleted
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


@dataclass(frozen=True)
class ChildRunRequest:
    name: str
    step: str
    index: int | None
    template: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class AttemptFinished:
    """One finished step attempt, for usage metering."""

    step: str
    index: int | None
    attempt: int
    job_name: str
    agent: str
    outcome: str
    wall_seconds: float
    cost: Decimal
    currency: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cpu_request: str | None = None
    memory_request: str | None = None


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
    if status.phase in TERMINAL_RUN_PHASES:
        _expire(run, world, decision)
        return decision
    if status.pinned is None and not _pin(run, world, decision):
        if run.spec.cancel and status.phase == "Pending":
            decision.waiting_for.clear()
            _finish(status, world.now, "Cancelled", "Cancelled", "cancelled before it started")
            _expire(run, world, decision)
        return decision
    _Progress(run, world, decision).advance()
    return decision


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
    problems += parameter_problems
    if problems:
        _finish(status, world.now, "Failed", "InvalidPlan", "; ".join(problems))
        _condition(status, READY, "False", "InvalidPlan", "; ".join(problems), world.now)
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
        if observation is None or observation.state == "Active":
            return
        attempt = entry.attempts or 0
        outputs, failure = _outcome(observation, step.timeout)
        self._meter(step, entry, observation, "Succeeded" if failure is None else "Failed")
        if failure is None:
            entry.outputs = outputs
            self._end(entry, "Succeeded", f"attempt {attempt} succeeded")
            return
        limit = step.retries.limit if step.retries else 0
        if attempt <= limit:
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
        self._end(entry, "Failed", f"{failure}{tries}")

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

    def _end(self, entry: StepStatus, phase: str, message: str) -> None:
        entry.phase = phase  # type: ignore[assignment]
        entry.message = _bounded(message)
        entry.finished_at = self.now
        entry.next_attempt_at = None

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


def _outcome(observation: JobObservation, timeout: str | None) -> tuple[dict[str, Any], str | None]:
    """(outputs, None) for a good attempt, or ({}, why it failed)."""
    if observation.state == "Missing":
        return {}, f"Job {observation.name} disappeared before it finished"
    if observation.state == "Failed":
        if observation.reason == "DeadlineExceeded":
            return {}, f"timed out after {timeout}"
        detail = (
            f"exit code {observation.exit_code}"
            if observation.exit_code is not None
            else (observation.reason or "failed")
        )
        message = (observation.termination_message or observation.message or "").strip()
        return {}, f"{detail}: {message[:500]}" if message else detail
    return parse_outputs(observation.termination_message)


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
    if not isinstance(outputs, dict):
        return {}, f"outputs must be a JSON object, got {type(outputs).__name__}: {text[:200]}"
    if len(outputs) > MAX_OUTPUT_KEYS:
        return {}, f"outputs have {len(outputs)} keys, at most {MAX_OUTPUT_KEYS} are allowed"
    return outputs, None


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


@dataclass(frozen=True)
class Transition:
    """One change of a Run's or a step's phase: an Event on the Run, a log line, an audit row."""

    step: str | None  # None: the Run itself
    index: int | None
    attempt: int | None
    from_phase: str | None
    to_phase: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        return self.reason in ("StepFailed", "StepRetrying", "RunFailed", "Pending")


_STEP_REASONS = {
    "Running": "StepStarted",
    "Succeeded": "StepSucceeded",
    "Failed": "StepFailed",
    "Skipped": "StepSkipped",
    "Cancelled": "StepCancelled",
}


def transitions(old: RunStatus, new: RunStatus) -> list[Transition]:
    """What changed between two statuses, steps first, in status order."""
    before = {(entry.name, entry.index): entry for entry in old.steps or []}
    changes = []
    for entry in new.steps or []:
        previous = before.get((entry.name, entry.index))
        old_phase = previous.phase if previous else None
        old_attempts = previous.attempts if previous else None
        if old_phase == entry.phase and old_attempts == entry.attempts:
            continue
        if entry.phase == "Pending" and old_phase is None:
            continue  # listing the plan is not news
        if entry.phase == "Waiting":
            reason = "StepRetrying" if entry.next_attempt_at else "StepWaiting"
        else:
            reason = _STEP_REASONS.get(entry.phase, "StepPending")
        changes.append(
            Transition(
                step=entry.name,
                index=entry.index,
                attempt=entry.attempts,
                from_phase=old_phase,
                to_phase=entry.phase,
                reason=reason,
                message=_step_label(entry) + (f": {entry.message}" if entry.message else ""),
            )
        )
    if new.phase and new.phase != old.phase:
        changes.append(
            Transition(
                step=None,
                index=None,
                attempt=None,
                from_phase=old.phase,
                to_phase=new.phase,
                reason="Pending" if new.phase == "Pending" else f"Run{new.phase}",
                message=new.message or new.phase,
            )
        )
    return changes


def _step_label(entry: StepStatus) -> str:
    item = f"[{entry.index}]" if entry.index is not None else ""
    return f"step {entry.name}{item}"
