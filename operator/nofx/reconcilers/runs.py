"""Run reconciler: gathers what decide() needs from Kopf's in-memory indexes and the API,
applies what it decided (Jobs, child Runs, status, Events), and schedules its next look.

Every trigger (a Run event, a finished Job, a timer, a freed agent slot, a Template or Agent
that appeared) funnels into RunReconciler.trigger(), which runs at most one reconcile per Run at
a time and coalesces triggers that arrive meanwhile. The work itself runs in a thread: the
official client is synchronous. No handler lists Runs: the cost of one event does not grow with
the number of Runs the cluster holds.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pydantic import ValidationError

from nofx import metrics
from nofx.api.agent import AgentSpec
from nofx.api.common import API_VERSION, GROUP, VERSION
from nofx.api.run import RunSpec, RunStatus
from nofx.api.template import TemplateSpec
from nofx.decisions import (
    ChildRunObservation,
    ChildRunRequest,
    Decision,
    RunView,
    World,
    decide,
    transitions,
)
from nofx.jobs import (
    ACCOUNT_LABEL,
    AGENT_LABEL,
    MANAGED_BY,
    RUN_LABEL,
    JobObservation,
    RunRef,
    build_job,
    label_value,
    observe_job,
    with_pod,
)
from nofx.kube import Conflict, Kube
from nofx.mirror import outbox
from nofx.mirror.writer import MirrorWriter
from nofx.slots import AgentSlots

log = logging.getLogger("nofx.runs")

RunKey = tuple[str, str]  # (namespace, name)
PARENT_LABEL = "nofx.dev/parent-run"
AUDIT_FINALIZER = "nofx.dev/audit"
MAX_CONFLICT_RETRIES = 5
RETRY_MAX_SECONDS = 30.0


@dataclass
class Observed:
    """What the indexes held for one Run when its reconcile was triggered."""

    jobs: dict[str, JobObservation]
    child_runs: dict[str, ChildRunObservation]
    agents: dict[str, AgentSpec]
    templates: dict[str, TemplateSpec | None]  # None: exists, but its spec is invalid
    active_jobs: dict[str, set[str]]  # agent name → names of its unfinished Jobs
    waiters_version: int


class Waiters:
    """Runs waiting for something that is not a Run event: a Template or Agent to appear, or a
    free slot of an Agent. The event that ends the wait triggers them.

    A reconcile decides from a snapshot and registers as a waiter afterwards; if the awaited
    event came in between, nobody would wake it. So every release bumps a version, and add()
    tells the caller whether one happened since its snapshot: then it must look again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_thing: dict[tuple[str, str, str], set[RunKey]] = defaultdict(set)
        self.version = 0

    def add(self, namespace: str, kind: str, name: str, run: RunKey, seen_version: int) -> bool:
        with self.lock:
            self.by_thing[(namespace, kind, name)].add(run)
            return self.version != seen_version

    def pop(self, namespace: str, kind: str, name: str) -> set[RunKey]:
        with self.lock:
            self.version += 1
            return self.by_thing.pop((namespace, kind, name), set())

    def pop_kind(self, namespace: str, kind: str) -> set[RunKey]:
        """Every Run of the namespace waiting for something of this kind (an Agent chosen by
        skills has no name to wait for)."""
        with self.lock:
            self.version += 1
            runs: set[RunKey] = set()
            for thing in [t for t in self.by_thing if t[0] == namespace and t[1] == kind]:
                runs |= self.by_thing.pop(thing)
            return runs

    def forget(self, run: RunKey) -> None:
        with self.lock:
            for waiting in self.by_thing.values():
                waiting.discard(run)


class RunReconciler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.slots = AgentSlots()
        self.waiters = Waiters()
        self.indexes: dict[str, Any] = {}
        self._busy: set[RunKey] = set()
        self._again: dict[RunKey, dict[str, Any] | None] = {}
        self._timers: dict[RunKey, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._failures: dict[RunKey, int] = {}
        self.mirror: MirrorWriter | None = None  # set when a Postgres mirror is configured

    # --- triggering (event loop) ---

    async def trigger(self, key: RunKey, body: dict[str, Any] | None = None) -> None:
        """Reconciles the Run now, or right after the reconcile already under way."""
        if key in self._busy:
            # Keep the freshest body; None means "read it from the API server".
            self._again[key] = body if body is not None else self._again.get(key)
            return
        self._busy.add(key)
        self._loop = asyncio.get_running_loop()
        try:
            while True:
                observed = self._observe(key)
                try:
                    await asyncio.to_thread(self._reconcile, key, body, observed)
                    self._failures.pop(key, None)
                except Exception:
                    # An API server restarting, a timeout: try again later, with backoff; the
                    # decision is recomputed from scratch, so a retry never repeats work.
                    failures = self._failures[key] = self._failures.get(key, 0) + 1
                    delay = min(RETRY_MAX_SECONDS, 0.5 * 2**failures)
                    log.exception(
                        "reconcile failed; retrying in %.1f s", delay, extra={"run": key[1]}
                    )
                    self._wake_at(key, datetime.now(UTC) + timedelta(seconds=delay))
                if key not in self._again:
                    return
                body = self._again.pop(key)
        finally:
            self._busy.discard(key)

    def trigger_soon(self, keys: Iterable[RunKey]) -> None:
        for key in keys:
            self._spawn(key)

    def is_own_write(self, key: RunKey, body: Mapping[str, Any]) -> bool:
        """The watch event of a write of ours (the reconciler's finalizer or status, the
        mirror's acknowledgement). Not while the Run is being deleted: the mirror's last
        acknowledgement is what lets the reconciler remove the audit finalizer."""
        metadata = body["metadata"]
        return not metadata.get("deletionTimestamp") and self.kube.own_writes.is_echo(
            "runs", *key, metadata.get("resourceVersion", "")
        )

    def forget(self, key: RunKey) -> None:
        self.kube.own_writes.forget("runs", *key)
        self._failures.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        self.waiters.forget(key)
        metrics.forget_run(key)

    def _wake_at(self, key: RunKey, when: datetime | None) -> None:
        """Called from the reconcile thread: one timer per Run, the earliest wins."""
        if when is None or self._loop is None:
            return
        delay = max(0.0, (when - datetime.now(UTC)).total_seconds()) + 0.05
        loop = self._loop

        def arm() -> None:
            previous = self._timers.get(key)
            if previous and previous.when() <= loop.time() + delay and not previous.cancelled():
                return
            if previous:
                previous.cancel()
            self._timers[key] = loop.call_later(delay, self._fire, key)

        loop.call_soon_threadsafe(arm)

    def _fire(self, key: RunKey) -> None:
        self._timers.pop(key, None)
        self._spawn(key)

    def _spawn(self, key: RunKey) -> None:
        task = asyncio.ensure_future(self.trigger(key))
        self._tasks.add(task)  # a reference, or the task may be garbage-collected mid-way
        task.add_done_callback(self._tasks.discard)

    def _observe(self, key: RunKey) -> Observed:
        """A consistent copy of the indexes for one Run, taken on the event loop's thread."""
        namespace = key[0]
        jobs = {job.name: job for job in self.indexes["jobs_by_run"].get(key, [])}
        children = {c.name: c for c in self.indexes["child_runs_by_parent"].get(key, [])}
        agents = {n: spec for n, spec in self.indexes["agents_by_namespace"].get(namespace, [])}
        templates = dict(self.indexes["templates_by_namespace"].get(namespace, []))
        active = {
            agent: set(
                self.indexes["active_jobs_by_agent"].get((namespace, label_value(agent)), [])
            )
            for agent, spec in agents.items()
            if spec.max_concurrent_steps is not None
        }
        return Observed(jobs, children, agents, templates, active, self.waiters.version)

    # --- reconciling (worker thread) ---

    def _reconcile(self, key: RunKey, body: dict[str, Any] | None, observed: Observed) -> None:
        started = time.perf_counter()
        try:
            for _ in range(MAX_CONFLICT_RETRIES):
                if body is None:
                    body = self.kube.get("runs", *key)
                    if body is None:
                        return
                try:
                    self._reconcile_body(key, body, observed)
                    return
                except Conflict:
                    body = None
            log.warning("gave up after repeated conflicts", extra={"run": key[1]})
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _reconcile_body(self, key: RunKey, body: dict[str, Any], observed: Observed) -> None:
        namespace, name = key
        metadata = body["metadata"]
        if metadata.get("deletionTimestamp"):
            self._let_go(key, body)
            return
        try:
            spec = RunSpec.model_validate(body.get("spec") or {})
            old_status = RunStatus.model_validate(body.get("status") or {})
        except ValidationError as error:
            kopf.warn(
                kopf.Body(cast(kopf.RawBody, body)), reason="InvalidRun", message=str(error)[:1000]
            )
            return
        run = RunView(
            name=name,
            namespace=namespace,
            uid=metadata["uid"],
            generation=metadata.get("generation", 1),
            spec=spec,
            status=old_status,
        )
        template, template_invalid = None, False
        if spec.template_ref is not None and old_status.pinned is None:
            template = observed.templates.get(spec.template_ref.name)
            template_invalid = template is None and spec.template_ref.name in observed.templates
        now = datetime.now(UTC)
        jobs = self._complete_observations(namespace, old_status, observed.jobs)
        children = self._complete_children(namespace, old_status, observed.child_runs)
        with self.slots.lock:
            agents = observed.agents if old_status.pinned is None else _pinned_agents(old_status)
            free = {
                agent: self.slots.free(
                    namespace, label_value(agent), limit, observed.active_jobs.get(agent)
                )
                for agent, limit in _limits(agents, observed.agents).items()
            }
            world = World(
                now=now,
                template=template,
                template_invalid=template_invalid,
                agents=observed.agents,
                jobs=jobs,
                child_runs=children,
                free_slots=free,
            )
            decision = decide(run, world)
            for request in decision.create_jobs:
                self.slots.reserve(namespace, label_value(request.agent_name), request.job_name)
        self._apply(run, body, decision, jobs, observed.waiters_version)

    def _let_go(self, key: RunKey, body: dict[str, Any]) -> None:
        """A Run being deleted: its Jobs go with it (owner references); the audit finalizer
        goes once the mirror has stored everything (the mirror's write wakes us)."""
        finalizers = body["metadata"].get("finalizers") or []
        if AUDIT_FINALIZER not in finalizers:
            return
        if self.mirror is not None and _pending_audit(body):
            return  # without a mirror nobody would ever store them: let go at once
        remaining = [f for f in finalizers if f != AUDIT_FINALIZER]
        self.kube.set_finalizers("runs", *key, remaining, body["metadata"]["resourceVersion"])

    def _complete_observations(
        self, namespace: str, status: RunStatus, indexed: dict[str, JobObservation]
    ) -> dict[str, JobObservation]:
        """Adds what the index cannot know: Pods of newly finished Jobs (for outputs and exit
        codes), and whether a Job missing from the index is only late there, or gone."""
        jobs = dict(indexed)
        for entry in status.steps or []:
            if entry.phase != "Running" or not entry.job_name:
                continue
            job = jobs.get(entry.job_name)
            if job is None:
                stored = self.kube.get_job(namespace, entry.job_name)
                job = observe_job(stored) if stored else _missing(entry.job_name, entry.name)
            if job.state in ("Succeeded", "Failed"):
                job = with_pod(job, self.kube.job_pod(namespace, job.name))
            jobs[job.name] = job
        return jobs

    def _complete_children(
        self, namespace: str, status: RunStatus, indexed: dict[str, ChildRunObservation]
    ) -> dict[str, ChildRunObservation]:
        """Tells a child Run the index has not seen yet from one that was deleted."""
        children = dict(indexed)
        for entry in status.steps or []:
            name = entry.child_run_name
            if entry.phase != "Running" or not name or name in children:
                continue
            stored = self.kube.get("runs", namespace, name)
            if stored is None:
                children[name] = ChildRunObservation(name=name, phase="Missing")
            else:
                stored_status = stored.get("status") or {}
                children[name] = ChildRunObservation(
                    name=name,
                    phase=stored_status.get("phase"),
                    outputs=stored_status.get("outputs"),
                    message=stored_status.get("message"),
                )
        return children

    def _apply(
        self,
        run: RunView,
        body: dict[str, Any],
        decision: Decision,
        jobs: dict[str, JobObservation],
        waiters_version: int,
    ) -> None:
        key = (run.namespace, run.name)
        if decision.delete_run:
            log.info("deleting finished Run (ttlSecondsAfterFinished)", extra={"run": run.name})
            self.kube.delete("runs", run.namespace, run.name)
            return
        finalizers = body["metadata"].get("finalizers") or []
        if self.mirror is not None and decision.status.audit and AUDIT_FINALIZER not in finalizers:
            # Held until the mirror stored every event, so deleting a Run loses none of them.
            stored = self.kube.set_finalizers(
                "runs", *key, [*finalizers, AUDIT_FINALIZER], body["metadata"]["resourceVersion"]
            )
            if stored is None:
                return
            self.kube.own_writes.add("runs", stored)
            body = {**body, "metadata": stored["metadata"]}
        ref = RunRef(run.name, run.namespace, run.uid, run.spec.account)
        for request in decision.create_jobs:
            created = self.kube.create_job(build_job(ref, request))
            if created:
                _observe_latency(body, run, request.step, jobs)
            log.info(
                "created Job" if created else "Job already existed",
                extra={
                    "run": run.name,
                    "step": request.step,
                    "attempt": request.attempt,
                    "job": request.job_name,
                },
            )
        for child in decision.create_child_runs:
            self.kube.create("runs", run.namespace, _child_run(run, child))
        # Stop work before recording that it stopped: a crash in between must not leave it.
        for job in decision.delete_jobs:
            self.kube.delete_job(run.namespace, job)
        for child_name in decision.cancel_child_runs:
            self.kube.patch_spec("runs", run.namespace, child_name, {"cancel": True})

        changes = transitions(run.status, decision.status)
        if self.mirror is not None:
            outbox.record(decision.status, changes, decision.finished_attempts, datetime.now(UTC))
        new_status = decision.status.to_dict()
        if new_status != run.status.to_dict():
            stored = self.kube.patch_status(
                "runs", run.namespace, run.name, new_status, body["metadata"]["resourceVersion"]
            )
            if stored is None:
                return
            self.kube.own_writes.add("runs", stored)
            for change in changes:
                kopf.event(
                    kopf.Body(cast(kopf.RawBody, body)),
                    type="Warning" if change.warning else "Normal",
                    reason=change.reason,
                    message=change.message[:1000],
                )
                log.info(
                    change.message,
                    extra={
                        "run": run.name,
                        "step": change.step,
                        "attempt": change.attempt,
                        "phase": change.to_phase,
                        "reason": change.reason,
                    },
                )
        for attempt in decision.finished_attempts:
            metrics.STEP_ATTEMPTS.labels(outcome=attempt.outcome).inc()
        metrics.set_run_phase(key, decision.status.phase)
        missed = False
        for kind, name in decision.waiting_for:
            # A freed slot is announced by a Job, whose label may hold a hash of the name.
            thing = label_value(name) if kind == "AgentSlot" else name
            missed |= self.waiters.add(run.namespace, kind, thing, key, waiters_version)
        if missed and self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn, key)
        self._wake_at(key, decision.wake_at)


def _pending_audit(body: dict[str, Any]) -> bool:
    return bool(((body.get("status") or {}).get("audit") or {}).get("pending"))


def _missing(job_name: str, step: str) -> JobObservation:
    return JobObservation(name=job_name, step=step, index=None, attempt=0, state="Missing")


def _pinned_agents(status: RunStatus) -> dict[str, AgentSpec]:
    assert status.pinned is not None
    return {
        name: AgentSpec.model_validate(agent.spec)
        for name, agent in (status.pinned.agents or {}).items()
    }


def _limits(pinned: dict[str, AgentSpec], current: dict[str, AgentSpec]) -> dict[str, int]:
    """maxConcurrentSteps of the Agents this Run may use. The limit is a property of the
    cluster's Agent (it protects a shared resource), so the current spec wins over the pin."""
    limits = {}
    for name, spec in pinned.items():
        agent = current.get(name, spec)
        if agent.max_concurrent_steps is not None:
            limits[name] = agent.max_concurrent_steps
    return limits


def _observe_latency(
    body: dict[str, Any], run: RunView, step: str, jobs: dict[str, JobObservation]
) -> None:
    """apply→first Job, and upstream Job finished→this Job, as seen from the API server's
    own timestamps (creationTimestamp, the Job's completionTime)."""
    now = datetime.now(UTC)
    if not run.status.steps or all(not e.attempts for e in run.status.steps):
        created = datetime.fromisoformat(
            body["metadata"]["creationTimestamp"].replace("Z", "+00:00")
        )
        metrics.FIRST_JOB_SECONDS.observe(max(0.0, (now - created).total_seconds()))
        return
    upstream_finished = [
        job.finished_at
        for entry in run.status.steps or []
        if entry.job_name in jobs and entry.phase in ("Running", "Succeeded")
        for job in [jobs[entry.job_name]]
        if job.finished_at is not None and job.state == "Succeeded"
    ]
    if upstream_finished:
        latest = max(upstream_finished)
        metrics.NEXT_JOB_SECONDS.observe(max(0.0, (now - latest).total_seconds()))


def _child_run(parent: RunView, request: ChildRunRequest) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Run",
        "metadata": {
            "name": request.name,
            "namespace": parent.namespace,
            "labels": {
                PARENT_LABEL: label_value(parent.name),
                ACCOUNT_LABEL: label_value(parent.spec.account),
                **MANAGED_BY,
            },
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Run",
                    "name": parent.name,
                    "uid": parent.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "templateRef": {"name": request.template},
            "parameters": request.parameters,
            "account": parent.spec.account,
        },
    }


def owning_run(body: Any) -> str | None:
    """Name of the Run that owns a Job or a child Run (labels may hold a hash of it)."""
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == "Run" and owner.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(owner["name"])
    return None


# --- Kopf wiring ----------------------------------------------------------------------------

RECONCILER: RunReconciler | None = None


def reconciler() -> RunReconciler:
    assert RECONCILER is not None, "nofx.operator sets the reconciler up at startup"
    return RECONCILER


@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
def jobs_by_run(namespace: Any, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
    owner = owning_run(body)
    return {(namespace, owner): observe_job(dict(body))} if owner else {}


@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT, AGENT_LABEL: kopf.PRESENT})
def active_jobs_by_agent(
    namespace: Any, name: Any, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Any:
    if observe_job(dict(body)).state != "Active":
        return {}  # not None: Kopf keeps an object's previous entry when a function returns None
    return {(namespace, labels[AGENT_LABEL]): name}


@kopf.index(GROUP, VERSION, "runs", labels={PARENT_LABEL: kopf.PRESENT})
def child_runs_by_parent(
    namespace: Any, name: Any, body: kopf.Body, status: kopf.Status, **_: Any
) -> Any:
    observation = ChildRunObservation(
        name=name,
        phase=status.get("phase"),
        outputs=status.get("outputs"),
        message=status.get("message"),
    )
    parent = owning_run(body)
    return {(namespace, parent): observation} if parent else {}


@kopf.on.event(GROUP, VERSION, "runs")
async def run_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: Any, name: Any, labels: kopf.Labels, **_: Any
) -> None:
    key = (namespace, name)
    operator = reconciler()
    parent = owning_run(body)
    if event["type"] == "DELETED":
        operator.forget(key)
    else:
        if operator.mirror is not None and (body.get("status") or {}).get("audit", {}).get(
            "pending"
        ):
            operator.mirror.offer_run(body)
        if not operator.is_own_write(key, body):
            await operator.trigger(key, dict(body))
    if parent:
        await operator.trigger((namespace, parent))


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
async def job_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: Any, name: Any, labels: kopf.Labels, **_: Any
) -> None:
    operator = reconciler()
    agent = labels.get(AGENT_LABEL)
    state = observe_job(dict(body)).state
    if event["type"] == "DELETED" or state != "Active":
        operator.slots.release(namespace, agent, name)
        if agent:
            operator.trigger_soon(operator.waiters.pop(namespace, "AgentSlot", agent))
        owner = owning_run(body)
        if owner:
            await operator.trigger((namespace, owner))
