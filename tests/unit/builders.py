"""Builders for the decision-logic tests: plans, Runs, Agents, and `Sim`, which plays the part of
the reconciler and of Kubernetes around decide(): it feeds each decision's status back as the
Run's status and turns the Jobs and child Runs a decision asked for into observations that a test
then finishes the way a Pod or a child Run would."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from nofx.api import AgentSpec, RunSpec, RunStatus, StepStatus, TemplateSpec
from nofx.api.run import STARTED_STEP_PHASES, TERMINAL_RUN_PHASES, TERMINAL_STEP_PHASES
from nofx.planner.decide import decide
from nofx.planner.facts import (
    Admission,
    ChildRunObservation,
    Decision,
    JobObservation,
    JobState,
    RunView,
    World,
)

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RUN_NAME = "demo"
RUN_UID = "6f1c2e1a-0000-4000-8000-000000000001"


def agent(image: str = "ghcr.io/nofx/coder:1", **fields: Any) -> AgentSpec:
    return AgentSpec.model_validate({"image": image, **fields})


AGENTS = {
    "coder": agent("ghcr.io/nofx/coder:1", skills=["code", "go"]),
    "reviewer": agent("ghcr.io/nofx/reviewer:1", skills=["review"]),
}


def step(name: str, *depends_on: str, agent: str = "coder", **fields: Any) -> dict[str, Any]:
    """A step as it is written in YAML (camelCase); agentRef unless another target is given."""
    spec: dict[str, Any] = {"name": name}
    if "childRun" not in fields and "agentSelector" not in fields:
        spec["agentRef"] = {"name": agent}
    if depends_on:
        spec["dependsOn"] = list(depends_on)
    return spec | fields


def template(*steps: dict[str, Any], **fields: Any) -> TemplateSpec:
    return TemplateSpec.model_validate({"steps": list(steps), **fields})


def inline(*steps: dict[str, Any], **fields: Any) -> RunSpec:
    """A Run with an inline plan."""
    return RunSpec.model_validate({"steps": list(steps), **fields})


def by_ref(name: str = "tpl", **fields: Any) -> RunSpec:
    """A Run of the Template `name`."""
    return RunSpec.model_validate({"templateRef": {"name": name}, **fields})


def view(
    spec: RunSpec,
    status: RunStatus | None = None,
    *,
    name: str = RUN_NAME,
    uid: str = RUN_UID,
) -> RunView:
    return RunView(
        name=name,
        namespace="team-a",
        uid=uid,
        generation=1,
        spec=spec,
        status=status or RunStatus(),
    )


def entry(status: RunStatus, name: str, index: int | None = None) -> StepStatus:
    found = [e for e in status.steps or [] if e.name == name and e.index == index]
    assert len(found) == 1, f"no single entry for {name}[{index}] in {status.steps}"
    return found[0]


def phases(status: RunStatus) -> dict[str, str]:
    """Phase of every step (not of forEach items), by name."""
    return {e.name: e.phase for e in status.steps or [] if e.index is None}


def condition(status: RunStatus, kind: str) -> tuple[str, str, str]:
    """(status, reason, message) of one condition."""
    found = [c for c in status.conditions or [] if c.type == kind]
    assert len(found) == 1, f"no single {kind} condition in {status.conditions}"
    return found[0].status, found[0].reason, found[0].message


def child_templates(plan: TemplateSpec | None) -> dict[str, TemplateSpec | None]:
    """A one-step Template for each Template the plan starts as a child Run: they exist."""
    steps = [*plan.steps, *(plan.finally_ or [])] if plan else []
    return {
        s.child_run.template_ref.name: template(step("work"))
        for s in steps
        if s.child_run is not None
    }


# --- the order steps move in ----------------------------------------------------------------

RANK = {"Pending": 0, "Waiting": 1, "Queued": 2, "Running": 2} | dict.fromkeys(
    TERMINAL_STEP_PHASES, 3
)


def check_moves(old: RunStatus, new: RunStatus) -> None:
    """Fails if any step of `new` moved backwards from `old`: phases only go Pending → Waiting →
    Queued/Running → terminal (Queued ↔ Running as Kueue admits and evicts); Running → Waiting
    only to wait for a retry, and Waiting → Queued/Running of a started step only with a new
    attempt. Attempts never decrease, entries never vanish, a
    terminal step or Run never changes phase."""
    if old.phase in TERMINAL_RUN_PHASES:
        assert new.phase == old.phase, f"Run left {old.phase} for {new.phase}"
    before = {(e.name, e.index): e for e in old.steps or []}
    after = {(e.name, e.index): e for e in new.steps or []}
    assert set(before) <= set(after), f"entries vanished: {set(before) - set(after)}"
    for key, now in after.items():
        was = before.get(key)
        if was is None:
            continue
        label = f"{key[0]}[{key[1]}]: {was.phase}/{was.attempts} -> {now.phase}/{now.attempts}"
        assert (now.attempts or 0) >= (was.attempts or 0), label
        if was.phase in TERMINAL_STEP_PHASES:
            assert now.phase == was.phase, label
        elif RANK[now.phase] < RANK[was.phase]:
            assert was.phase in STARTED_STEP_PHASES and now.phase == "Waiting", label
            assert now.next_attempt_at is not None, label
        if was.phase == "Waiting" and now.phase in STARTED_STEP_PHASES and was.attempts:
            assert (now.attempts or 0) > was.attempts, label


# --- a Run's life ---------------------------------------------------------------------------


class Sim:
    """One Run and the world around it. decide() runs the reconcile; Jobs and child Runs a
    decision asks for appear as Active / Running observations at once."""

    def __init__(
        self,
        spec: RunSpec,
        *,
        template: TemplateSpec | None = None,
        agents: dict[str, AgentSpec] | None = None,
        free_slots: dict[str, int] | None = None,
        name: str = RUN_NAME,
        uid: str = RUN_UID,
        now: datetime = T0,
        check_schema: bool = True,
    ) -> None:
        self.spec = spec
        self.check_schema = check_schema
        self.name, self.uid = name, uid
        self.status = RunStatus()
        self.world = World(
            now=now,
            template=template,
            agents=dict(AGENTS if agents is None else agents),
            free_slots=dict(free_slots or {}),
            templates=child_templates(template or spec.inline_template()),
            namespace_account="team-a",  # the namespace of view(), without an account label
        )
        self.last = Decision(self.status)
        self.created_jobs: list[str] = []

    @property
    def view(self) -> RunView:
        return view(self.spec, self.status, name=self.name, uid=self.uid)

    @property
    def now(self) -> datetime:
        return self.world.now

    def decide(self) -> Decision:
        decision = decide(self.view, self.world)
        check_moves(self.status, decision.status)
        if self.check_schema:
            # Whatever decide() writes must be a status the API server accepts (the CRD schema
            # is generated from the same models).
            RunStatus.model_validate(decision.status.to_dict())
        self.status = decision.status
        self.last = decision
        jobs = dict(self.world.jobs)
        for request in decision.create_jobs:
            assert request.job_name not in jobs, f"Job {request.job_name} requested twice"
            self.created_jobs.append(request.job_name)
            # A Job of a queue is created suspended: it starts when Kueue admits it (admit()).
            jobs[request.job_name] = JobObservation(
                name=request.job_name,
                step=request.step,
                index=request.index,
                attempt=request.attempt,
                state="Active",
                started_at=None if request.queue_name else self.now,
                queue_name=request.queue_name,
                suspended=bool(request.queue_name),
            )
        for name in decision.delete_jobs:
            jobs.pop(name, None)
        children = dict(self.world.child_runs)
        for child in decision.create_child_runs:
            children.setdefault(child.name, ChildRunObservation(child.name, "Running"))
        self.world = replace(self.world, jobs=jobs, child_runs=children)
        return decision

    def tick(self, seconds: float) -> None:
        self.world = replace(self.world, now=self.now + timedelta(seconds=seconds))

    def set_world(self, **changes: Any) -> None:
        self.world = replace(self.world, **changes)

    def edit(self, **changes: Any) -> None:
        """Changes the Run's spec, as `kubectl patch` would (cancel, suspend, approvals)."""
        self.spec = RunSpec.model_validate(self.spec.to_dict() | changes)

    def job(self, name: str, index: int | None = None) -> JobObservation:
        job_name = entry(self.status, name, index).job_name
        assert job_name is not None, f"step {name}[{index}] has no Job"
        return self.world.jobs[job_name]

    def finish(
        self,
        name: str,
        index: int | None = None,
        *,
        state: JobState = "Succeeded",
        outputs: dict[str, Any] | None = None,
        message: str | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """The Job of the step's current attempt finished; outputs become its termination
        message as JSON."""
        self.finish_job(
            self.job(name, index).name,
            state=state,
            outputs=outputs,
            message=message,
            exit_code=exit_code,
            reason=reason,
        )

    def finish_job(
        self,
        job_name: str,
        *,
        state: JobState = "Succeeded",
        outputs: dict[str, Any] | None = None,
        message: str | None = None,
        exit_code: int | None = None,
        reason: str | None = None,
    ) -> None:
        job = self.world.jobs[job_name]
        if exit_code is None and state in ("Succeeded", "Failed"):
            exit_code = 0 if state == "Succeeded" else 1
        termination = json.dumps(outputs) if outputs is not None else message
        jobs = dict(self.world.jobs)
        jobs[job.name] = replace(
            job,
            state=state,
            reason=reason,
            termination_message=termination,
            exit_code=exit_code,
            finished_at=self.now,
            pod_read=True,
        )
        self.world = replace(self.world, jobs=jobs)

    def succeed(
        self, name: str, index: int | None = None, outputs: dict[str, Any] | None = None
    ) -> None:
        self.finish(name, index, outputs=outputs)

    def fail(self, name: str, index: int | None = None, message: str = "boom") -> None:
        self.finish(name, index, state="Failed", message=message, reason="BackoffLimitExceeded")

    def child(
        self,
        name: str,
        phase: str,
        outputs: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        child_name = entry(self.status, name).child_run_name
        assert child_name is not None
        children = dict(self.world.child_runs)
        children[child_name] = ChildRunObservation(child_name, phase, outputs, message)
        self.world = replace(self.world, child_runs=children)

    def queue(self, name: str, admission: Admission, index: int | None = None) -> None:
        """What Kueue's Workload says of the step's current Job; admitted resumes the Job (its
        Pod starts at once), not admitted suspends it again (an eviction, if it ran)."""
        job = self.job(name, index)
        if admission.admitted:
            job = replace(job, suspended=False, started_at=self.now, pods_started=True)
        else:
            job = replace(job, suspended=True)
        jobs = dict(self.world.jobs)
        jobs[job.name] = replace(job, admission=admission)
        self.world = replace(self.world, jobs=jobs)

    def active_jobs(self) -> list[str]:
        return sorted(name for name, job in self.world.jobs.items() if job.state == "Active")

    def requested(self) -> list[tuple[str, int | None, int]]:
        """(step, index, attempt) of the Jobs the last decision asked for."""
        return [(r.step, r.index, r.attempt) for r in self.last.create_jobs]
