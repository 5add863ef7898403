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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from pydantic import ValidationError

from nofx import metrics
from nofx.api.agent import AgentSpec
from nofx.api.common import GROUP, VERSION
from nofx.api.reasons import Reason
from nofx.api.run import (
    TERMINAL_RUN_PHASES,
    TERMINAL_STEP_PHASES,
    AuditOutbox,
    RunSpec,
    RunStatus,
)
from nofx.api.template import TemplateSpec
from nofx.builders.child_run import build_child_run
from nofx.builders.job import RunRef, build_job
from nofx.builders.job_status import observe_job, with_pod
from nofx.builders.labels import (
    AGENT_LABEL,
    DEPTH_LABEL,
    PARENT_LABEL,
    ROOT_LABEL,
    RUN_LABEL,
    label_value,
)
from nofx.builders.ownership import owning_run
from nofx.changes import transitions
from nofx.kube import Conflict, Kube, Rejected
from nofx.mirror import outbox
from nofx.mirror.writer import MirrorWriter
from nofx.planner.attempts import POD_START_CHECK
from nofx.planner.conditions import reconcile_error
from nofx.planner.decide import decide
from nofx.planner.facts import (
    ChildRunObservation,
    Decision,
    JobObservation,
    JobRequest,
    Limits,
    RunView,
    World,
)
from nofx.planner.naming import job_name
from nofx.planner.stopping import abort_run
from nofx.reconcilers.errors import ErrorBudget, is_transient
from nofx.slots import AgentSlots

log = logging.getLogger("nofx.runs")

RunKey = tuple[str, str]  # (namespace, name)
AUDIT_FINALIZER = "nofx.dev/audit"
MAX_CONFLICT_RETRIES = 5


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
    def __init__(self, kube: Kube, limits: Limits | None = None) -> None:
        self.kube = kube
        self.limits = limits or Limits()
        self.slots = AgentSlots()
        self.waiters = Waiters()
        self.indexes: dict[str, Any] = {}
        self._busy: set[RunKey] = set()
        self._again: dict[RunKey, dict[str, Any] | None] = {}
        self._timers: dict[RunKey, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self.errors = ErrorBudget()
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
                    self.errors.forget(key)
                except Exception as error:
                    await asyncio.to_thread(self._failed, key, error)
                if key not in self._again:
                    return
                body = self._again.pop(key)
        finally:
            self._busy.discard(key)

    def _failed(self, key: RunKey, error: Exception) -> None:
        """A reconcile raised. The decision is recomputed from scratch on retry, so a retry
        never repeats work. An outage (transient) is retried with capped backoff for as long as
        it lasts, shown on the Run once it lasted; anything else is a fault of this Run or of
        the operator that retrying will not mend: after a few tries the Run fails with it."""
        transient = is_transient(error)
        failures, delay = self.errors.failed(key)
        detail = f"{type(error).__name__}: {error}"[:1000]
        metrics.RECONCILE_ERRORS.labels(transient=str(transient).lower()).inc()
        log.error(
            "reconcile failed; retrying in %.1f s",
            delay,
            exc_info=error,
            extra={"run": key[1], "failures": failures, "transient": transient},
        )
        self._wake_at(key, datetime.now(UTC) + timedelta(seconds=delay))
        if failures < self.errors.show_after(transient):
            return
        try:
            body = self.kube.get("runs", *key)
            if body is None:
                return
            status = RunStatus.model_validate(body.get("status") or {})
            now = datetime.now(UTC)
            if transient:
                message = f"retrying after {failures} failures: {detail}"
                shown = reconcile_error(status, now, type(error).__name__, message)
                self._patch_status(key, body, shown.to_dict(), status.to_dict())
                return
            run = _view(key, body, RunSpec.model_validate(body.get("spec") or {}), status)
            message = f"the operator failed on this Run {failures} times: {detail}"
            self._apply(run, body, abort_run(run, now, Reason.RECONCILE_ERROR, message), {}, 0)
        except Exception:
            log.exception("could not report the failure on the Run", extra={"run": key[1]})

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
        self.errors.forget(key)
        timer = self._timers.pop(key, None)
        if timer:
            timer.cancel()
        self.waiters.forget(key)
        metrics.forget_run(key)

    def _wake_at(self, key: RunKey, when: datetime | None) -> None:
        """Called from the reconcile thread: one timer per Run, set to when its latest
        decision wants another look (None: none). Each decision sees the whole Run, so the
        latest one knows every deadline that is still to come."""
        if self._loop is None:
            return
        loop = self._loop

        def arm() -> None:
            previous = self._timers.pop(key, None)
            if previous:
                previous.cancel()
            if when is not None:
                delay = max(0.0, (when - datetime.now(UTC)).total_seconds()) + 0.05
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
            # Another writer keeps winning: the error budget retries later, with backoff.
            raise Conflict(f"runs/{key[1]}: {MAX_CONFLICT_RETRIES} conflicts in a row")
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _reconcile_body(self, key: RunKey, body: dict[str, Any], observed: Observed) -> None:
        namespace = key[0]
        metadata = body["metadata"]
        if metadata.get("deletionTimestamp"):
            self._let_go(key, body)
            return
        run = self._view_or_fail(key, body)
        if run is None:
            return
        spec, old_status = run.spec, run.status
        template, template_invalid = None, False
        if spec.template_ref is not None and old_status.pinned is None:
            template = observed.templates.get(spec.template_ref.name)
            template_invalid = template is None and spec.template_ref.name in observed.templates
        now = datetime.now(UTC)
        jobs = self._complete_observations(run, observed.jobs, now)
        children = self._complete_children(namespace, old_status, observed.child_runs)
        root = self.indexes["child_runs_by_root"].get((namespace, run.root_uid), ())
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
                templates=observed.templates,
                limits=self.limits,
                tree_size=len(root),
            )
            decision = decide(run, world)
            for request in decision.create_jobs:
                self.slots.reserve(namespace, label_value(request.agent_name), request.job_name)
        refused = self._create_children(run, body, decision, jobs)
        if refused:
            # What the API server refused is an observation like a failed Job: decide again
            # with it, so the step fails now and with the server's own words.
            world = replace(
                world,
                jobs={**jobs, **refused.jobs},
                child_runs={**children, **refused.child_runs},
            )
            decision = decide(run, world)
        self._apply(run, body, decision, world.jobs, observed.waiters_version)

    def _view_or_fail(self, key: RunKey, body: dict[str, Any]) -> RunView | None:
        """The Run as plain data; a spec or status that does not validate (the API server's
        schema let it through, or someone rewrote status) fails the Run with the error."""
        status: RunStatus | None = None
        try:
            status = RunStatus.model_validate(body.get("status") or {})
            spec = RunSpec.model_validate(body.get("spec") or {})
        except ValidationError as error:
            if status is not None and status.phase in TERMINAL_RUN_PHASES:
                return None  # failed already: nothing is left to stop
            where = "spec" if status is not None else "status"
            reason = Reason.INVALID_SPEC if status is not None else Reason.INCONSISTENT_STATUS
            message = f"the Run's {where} does not validate: {error}"
            old = status or RunStatus(audit=_audit_outbox(body))
            view = _view(key, body, RunSpec.model_construct(), old)  # spec unused when failing
            failed = abort_run(view, datetime.now(UTC), reason, message)
            self._apply(view, body, failed, {}, 0, replace_status=status is None)
            return None
        return _view(key, body, spec, status)

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
        self, run: RunView, indexed: dict[str, JobObservation], now: datetime
    ) -> dict[str, JobObservation]:
        """Adds what the index cannot know: the Pod of every finished Job a step may read now
        (outputs and exit codes live only there), why a Job has no Pod, and whether a Job
        missing from the index is only late there, or gone.

        A step's next Job may exist and even have finished while its status still says
        otherwise (the operator died between creating it and recording that): so every
        unfinished step's current and next attempt is looked at, whatever its phase says, and
        every Job of a step the status does not list yet."""
        namespace = run.namespace
        jobs = dict(indexed)
        listed = {(entry.name, entry.index) for entry in run.status.steps or []}
        wanted: dict[str, str | None] = {  # Job name → the step's current Job, if it is that
            job.name: None for job in indexed.values() if (job.step, job.index) not in listed
        }
        for entry in run.status.steps or []:
            if entry.phase in TERMINAL_STEP_PHASES or entry.child_run_name:
                continue
            attempts = entry.attempts or 0
            wanted[job_name(run.name, run.uid, entry.name, entry.index, attempts + 1)] = None
            if entry.phase == "Running" and entry.job_name:
                wanted[entry.job_name] = entry.name
        for name, step_of_current in wanted.items():
            job = jobs.get(name)
            if job is None and step_of_current is not None:
                stored = self.kube.get_job(namespace, name)
                job = observe_job(stored) if stored else _missing(name, step_of_current)
            if job is None:
                continue
            if job.state in ("Succeeded", "Failed"):
                job = with_pod(job, self.kube.job_pod(namespace, name))
            elif job.state == "Active" and _waits_for_pod(job, now):
                job = replace(job, pod_create_error=self.kube.pod_create_error(namespace, name))
            jobs[name] = job
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

    def _create_children(
        self,
        run: RunView,
        body: dict[str, Any],
        decision: Decision,
        jobs: dict[str, JobObservation],
    ) -> Refused | None:
        """Creates the Jobs and child Runs decided; returns what the API server refused."""
        refused = Refused()
        ref = RunRef(run.name, run.namespace, run.uid, run.spec.account)
        for request in decision.create_jobs:
            extra = {"run": run.name, "step": request.step, "job": request.job_name}
            try:
                created = self.kube.create_job(build_job(ref, request))
            except Rejected as error:
                log.warning("the API server refused a Job: %s", error.message, extra=extra)
                refused.jobs[request.job_name] = _rejected_job(request.job_name, request, error)
                continue
            if created:
                _observe_latency(body, run, request.step, jobs)
            log.info("created Job" if created else "Job already existed", extra=extra)
        for child in decision.create_child_runs:
            try:
                self.kube.create("runs", run.namespace, build_child_run(run, child))
            except Rejected as error:
                log.warning("the API server refused a child Run: %s", error.message)
                refused.child_runs[child.name] = ChildRunObservation(
                    name=child.name, phase="Rejected", message=error.message
                )
        return refused if refused.jobs or refused.child_runs else None

    def _apply(
        self,
        run: RunView,
        body: dict[str, Any],
        decision: Decision,
        jobs: dict[str, JobObservation],
        waiters_version: int,
        *,
        replace_status: bool = False,
        fail_if_refused: bool = True,
    ) -> None:
        """Carries a decision out: the audit finalizer, stopping work, the status (with its
        audit outbox) in one write, then Events, metrics, waits and the next wake-up. A status
        the API server refuses fails the Run (fail_if_refused), or is raised to the caller."""
        key = (run.namespace, run.name)
        if decision.delete_run:
            log.info("deleting finished Run (ttlSecondsAfterFinished)", extra={"run": run.name})
            self.kube.delete("runs", run.namespace, run.name)
            return
        changes = transitions(run.status, decision.status)
        if self.mirror is not None:
            outbox.record(decision.status, changes, decision.finished_attempts, datetime.now(UTC))
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
        # Stop work before recording that it stopped: a crash in between must not leave it.
        for job in decision.delete_jobs:
            self.kube.delete_job(run.namespace, job)
        for child_name in decision.cancel_child_runs:
            self.kube.patch_spec("runs", run.namespace, child_name, {"cancel": True})

        new_status = decision.status.to_dict()
        old_status = (body.get("status") or {}) if replace_status else run.status.to_dict()
        if new_status != old_status:
            try:
                stored = self._patch_status(key, body, new_status, old_status)
            except Rejected as error:
                if not fail_if_refused:
                    raise
                self._status_refused(run, body, decision, error)
                return
            if stored is None:
                return
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

    def _patch_status(
        self,
        key: RunKey,
        body: dict[str, Any],
        status: dict[str, Any],
        previous: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Writes status as a whole: a merge patch, with null for every field it dropped."""
        dropped = {field: None for field in previous if field not in status}
        stored = self.kube.patch_status(
            "runs", *key, {**status, **dropped}, body["metadata"]["resourceVersion"]
        )
        if stored is not None:
            self.kube.own_writes.add("runs", stored)
        return stored

    def _status_refused(
        self, run: RunView, body: dict[str, Any], decision: Decision, error: Rejected
    ) -> None:
        """The API server refused the status decided (too large, most likely): the Run fails
        with its words. What this decision started is stopped again, since no status records
        it. If even that status is refused, only the failure is kept (the audit trail and
        Events still have every step's story)."""
        reason = Reason.STATUS_TOO_LARGE if error.too_large else Reason.STATUS_REJECTED
        message = f"the API server refused the Run's status: {error.message}"
        log.warning(message, extra={"run": run.name, "reason": reason})

        def failure() -> Decision:
            failed = abort_run(run, datetime.now(UTC), reason, message)
            failed.delete_jobs += [r.job_name for r in decision.create_jobs]
            failed.cancel_child_runs += [c.name for c in decision.create_child_runs]
            return failed

        try:
            self._apply(run, body, failure(), {}, 0, fail_if_refused=False)
        except Rejected:
            # Raised again if refused even now: the error budget retries it with backoff.
            least = failure()
            least.status = _only_the_failure(least.status)
            self._apply(run, body, least, {}, 0, replace_status=True, fail_if_refused=False)


def _only_the_failure(status: RunStatus) -> RunStatus:
    """The least status that still tells the truth: phase, reason, times and the audit outbox."""
    return RunStatus(
        phase=status.phase,
        conditions=status.conditions,
        observed_generation=status.observed_generation,
        started_at=status.started_at,
        finished_at=status.finished_at,
        message=status.message,
        usage=status.usage,
        audit=status.audit,
    )


@dataclass
class Refused:
    """Jobs and child Runs the API server refused to create, as observations."""

    jobs: dict[str, JobObservation] = field(default_factory=dict)
    child_runs: dict[str, ChildRunObservation] = field(default_factory=dict)


def _rejected_job(name: str, request: JobRequest, error: Rejected) -> JobObservation:
    return JobObservation(
        name=name,
        step=request.step,
        index=request.index,
        attempt=request.attempt,
        state="Failed",
        reason=Reason.JOB_REJECTED,
        message=error.message,
        pods_started=True,
        pod_read=True,
    )


def _waits_for_pod(job: JobObservation, now: datetime) -> bool:
    """A Job without a Pod for longer than it normally takes to get one."""
    return (
        not job.pods_started
        and job.created_at is not None
        and now - job.created_at >= POD_START_CHECK
    )


def _view(key: RunKey, body: dict[str, Any], spec: RunSpec, status: RunStatus) -> RunView:
    metadata = body["metadata"]
    labels = metadata.get("labels") or {}
    child = owning_run(body) is not None
    depth = labels.get(DEPTH_LABEL, "1") if child else "0"
    return RunView(
        name=key[1],
        namespace=key[0],
        uid=metadata["uid"],
        generation=metadata.get("generation", 1),
        spec=spec,
        status=status,
        depth=int(depth) if depth.isdigit() else 1,
        root_uid=labels.get(ROOT_LABEL, metadata["uid"]) if child else metadata["uid"],
    )


def _audit_outbox(body: dict[str, Any]) -> AuditOutbox | None:
    """The audit outbox of a status that does not validate as a whole, if it still does."""
    try:
        return AuditOutbox.model_validate(((body.get("status") or {}).get("audit")) or None)
    except ValidationError:
        return None


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


@kopf.index(GROUP, VERSION, "runs", labels={ROOT_LABEL: kopf.PRESENT})
def child_runs_by_root(namespace: Any, name: Any, labels: kopf.Labels, **_: Any) -> Any:
    """How many child Runs each tree holds, at every depth (bounded per root Run)."""
    return {(namespace, labels[ROOT_LABEL]): name}


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
