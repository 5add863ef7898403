"""The Run reconciler: for one Run, gather what the planner needs (observe.py), decide, carry the
decision out (apply.py), and ask for the next look the decision wants.

Every trigger (a Run event, a finished Job, a timer, a freed agent slot, a Template or Agent
that appeared) adds the Run's key to a work queue (nofx.workqueue): a Run is reconciled by at
most one worker at a time, triggers that arrive meanwhile collapse into one more pass with the
freshest body, failures come back after a capped backoff. The pass itself runs in a thread (the
official client is synchronous). No handler lists Runs: the cost of one event does not grow with
the number of Runs the cluster holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from nofx import metrics
from nofx.api import accounts, queues
from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.api_errors import Conflict
from nofx.builders.labels import label_value
from nofx.builders.ownership import owning_run
from nofx.kube import Kube
from nofx.mirror.writer import MirrorWriter
from nofx.planner.decide import decide
from nofx.planner.facts import Decision, Limits, RunView, World
from nofx.reconcilers import apply, observe, run_failures
from nofx.reconcilers.account_budgets import AccountBudgets
from nofx.reconcilers.apply import AUDIT_FINALIZER
from nofx.reconcilers.observe import Observed
from nofx.reconcilers.step_cache import StepCache
from nofx.reconcilers.step_jobs import StepJob
from nofx.reconcilers.step_pods import StepPods
from nofx.reconcilers.waiters import Waiters
from nofx.reconcilers.watched import Watched
from nofx.slots import AgentSlots
from nofx.workqueue import Result, Retry, WorkerPool

log = logging.getLogger("nofx.runs")

RunKey = tuple[str, str]  # (namespace, name)
MAX_CONFLICT_RETRIES = 5


class RunReconciler:
    def __init__(
        self,
        kube: Kube,
        limits: Limits | None = None,
        mirror: MirrorWriter | None = None,
        watched: Watched | None = None,
        account_budgets: AccountBudgets | None = None,
        step_cache: StepCache | None = None,
        step_pods: StepPods | None = None,
    ) -> None:
        self.kube = kube
        self.limits = limits or Limits()
        self.mirror = mirror  # None: no Postgres mirror configured
        self.account_budgets = account_budgets  # None: accounts have no monthly budgets
        self.step_cache = step_cache  # None: no mirror, so no cached steps
        if step_cache is not None:
            step_cache.on_answer = lambda key: self.trigger_from_thread([key])
        self.step_pods = step_pods  # None: every finished Job's Pod is listed
        self.watched = watched or Watched()  # the operator's watches; tests fill them
        self.watched.step_jobs.on_finished = self._job_finished_from_thread
        self.slots = AgentSlots()
        self.waiters = Waiters()
        self.workers: WorkerPool[RunKey, dict[str, Any]] = WorkerPool(self.reconcile, self._failed)
        self.queue, self.timers, self.backoff = (
            self.workers.queue,
            self.workers.timers,
            self.workers.backoff,
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the queue and its workers (event loop) ---

    def start(self, workers: int) -> None:
        """Starts the workers on the running loop (the operator's startup)."""
        self._loop = asyncio.get_running_loop()
        self.workers.start(workers)

    async def stop(self) -> None:
        await self.workers.stop()

    def trigger(self, key: RunKey) -> None:
        """Reconciles the Run soon, with the newest body we wrote or saw, else read afresh.
        The queue holds keys only: a burst of thousands of Runs waiting for a worker must not
        hold a parsed body each (own_writes keeps the newest bodies, a bounded number)."""
        self.queue.add(key)

    def run_changed(self, kind: str, body: dict[str, Any]) -> None:
        """A change the Run watch saw (on its thread). The Run is reconciled unless the change
        echoes our own write; its parent, if any, whatever it is (a child's phase is what the
        parent waits for). Entries of its audit outbox go to the mirror."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        parent = owning_run(body)
        if kind == "DELETED":
            self._tell(kind, key, body, True, parent)
            return
        if self.mirror is not None and observe.pending_audit(body):
            self.mirror.offer_run(body)
        # Never an echo while the Run is being deleted: the mirror's last acknowledgement is
        # what lets the reconciler remove the audit finalizer.
        own = not metadata.get("deletionTimestamp") and self.kube.own_writes.echo_or_hold(
            "runs", *key, metadata.get("resourceVersion", ""),
            lambda own: self._tell(kind, key, body, not own, parent),
        )  # fmt: skip
        if own is not None:  # else told once our write in flight is recorded (own_writes.py)
            self._tell(kind, key, body, not own, parent)

    def _tell(
        self, kind: str, key: RunKey, body: dict[str, Any], wake: bool, parent: str | None
    ) -> None:
        if wake and kind != "DELETED":
            self.kube.own_writes.seen("runs", body)
        if (wake or parent) and self._loop is not None:
            self._loop.call_soon_threadsafe(self._run_changed, kind, key, wake, parent)

    def _run_changed(self, kind: str, key: RunKey, wake: bool, parent: str | None) -> None:
        if kind == "DELETED":
            self.forget(key)
        elif wake:
            self.trigger(key)
        if parent:
            self.trigger((key[0], parent))

    def trigger_from_thread(self, keys: Iterable[RunKey]) -> None:
        """trigger_soon, from a thread other than the loop's."""
        keys = list(keys)
        if keys and self._loop is not None:
            self._loop.call_soon_threadsafe(self.trigger_soon, keys)

    def trigger_soon(self, keys: Iterable[RunKey]) -> None:
        for key in keys:
            self.queue.add(key)

    def _job_finished_from_thread(self, job: StepJob) -> None:
        """The step Job watch saw a Job finish (or go): its Agent slot is free for the Runs
        waiting on one, and its Run has a step to move on."""
        self.slots.release(job.namespace, job.agent, job.observation.name)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._job_finished, job)

    def _job_finished(self, job: StepJob) -> None:
        if job.agent:
            self.trigger_soon(self.waiters.pop(job.namespace, "AgentSlot", job.agent))
        if job.run:
            self.trigger((job.namespace, job.run))

    def forget(self, key: RunKey) -> None:
        """A deleted Run: nothing of it is kept."""
        self.kube.own_writes.forget("runs", *key)
        self.workers.forget(key)
        self.waiters.forget(key)
        if self.step_cache is not None:
            self.step_cache.forget(key)
        metrics.forget_run(key)

    async def reconcile(self, key: RunKey, body: dict[str, Any] | None) -> Result:
        """One pass: what the watches hold is copied first, then it runs in a thread."""
        if not self.watched.is_listed():  # a Run's Jobs unknown: it would redo them
            await asyncio.to_thread(self.watched.wait_listed)
        observed = observe.observe(self.watched, key, self.waiters.version)
        return await asyncio.to_thread(self._reconcile, key, body, observed)

    async def _failed(self, key: RunKey, error: Exception, retry: Retry) -> None:
        await asyncio.to_thread(self.report_failure, key, error, retry)

    # --- one pass (worker thread) ---

    def _reconcile(self, key: RunKey, body: dict[str, Any] | None, observed: Observed) -> Result:
        started = time.perf_counter()
        try:
            if body is None:
                body = self.kube.own_writes.latest("runs", *key)
            for _ in range(MAX_CONFLICT_RETRIES):
                if body is None:
                    body = self.kube.get("runs", *key)
                    if body is None:
                        return Result()
                try:
                    return self._reconcile_body(key, body, observed)
                except Conflict:
                    body = None
            # Another writer keeps winning: the backoff retries later.
            raise Conflict(f"runs/{key[1]}: {MAX_CONFLICT_RETRIES} conflicts in a row")
        finally:
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)

    def _reconcile_body(self, key: RunKey, body: dict[str, Any], observed: Observed) -> Result:
        namespace = key[0]
        if body["metadata"].get("deletionTimestamp"):
            self._let_go(key, body)
            return Result()
        run = run_failures.view_or_fail(self._carry_out, key, body)
        if run is None:
            return Result()
        spec, old_status = run.spec, run.status
        template, template_invalid = None, False
        if spec.template_ref is not None and old_status.pinned is None:
            template = observed.templates.get(spec.template_ref.name)
            template_invalid = template is None and spec.template_ref.name in observed.templates
        now = datetime.now(UTC)
        jobs = observe.complete_jobs(self.kube, run, observed.jobs, now, self.step_pods)
        children = observe.complete_children(self.kube, namespace, old_status, observed.child_runs)
        namespace_account = namespace_queue = None
        unpinned = old_status.account is None or old_status.pinned is None
        if unpinned and old_status.phase not in TERMINAL_RUN_PHASES:
            labels = self.watched.namespaces.labels_of(namespace, self.kube.namespace_labels)
            namespace_account = accounts.namespace_account(namespace, labels)
            namespace_queue = queues.namespace_queue(labels)
        account = old_status.account or namespace_account
        account_budget = None
        if self.account_budgets is not None and old_status.pinned is None and account:
            account_budget = self.account_budgets.of(account)  # memory only: no I/O here
        with self.slots.lock:
            pinned = old_status.pinned is not None
            agents = observe.pinned_agents(old_status) if pinned else observed.agents
            free = {
                agent: self.slots.free(
                    namespace, label_value(agent), limit, observed.active_jobs.get(agent)
                )
                for agent, limit in observe.slot_limits(agents, observed.agents).items()
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
                tree_size=self.watched.runs.tree_size(namespace, run.root_uid),
                namespace_account=namespace_account,
                namespace_queue=namespace_queue,
                account_budget=account_budget,
                cache_enabled=self.step_cache is not None,
                cache_answers=self.step_cache.answers(key) if self.step_cache else {},
            )
            decision = decide(run, world)
            for request in decision.create_jobs:
                self.slots.reserve(namespace, label_value(request.agent_name), request.job_name)
        refused = apply.create_children(self.kube, run, body, decision, jobs)
        if refused:
            # What the API server refused is an observation like a failed Job: decide again
            # with it, so the step fails now and with the server's own words.
            world = replace(
                world,
                jobs={**jobs, **refused.jobs},
                child_runs={**children, **refused.child_runs},
            )
            decision = decide(run, world)
        return self._carry_out(run, body, decision, observed.waiters_version)

    def _carry_out(
        self,
        run: RunView,
        body: dict[str, Any],
        decision: Decision,
        waiters_version: int,
        *,
        replace_status: bool = False,
    ) -> Result:
        """Applies the decision, then registers what it waits for and asks for its next look."""
        key = (run.namespace, run.name)
        done = apply.apply(
            self.kube, self.mirror, run, body, decision, replace_status=replace_status
        )
        if self.step_cache is not None:
            self.step_cache.ask(key, done.cache_queries if done is not None else ())
        if done is None:
            return Result()
        missed = False
        for kind, name in done.waiting_for:
            # A freed slot is announced by a Job, whose label may hold a hash of the name.
            thing = label_value(name) if kind == "AgentSlot" else name
            missed |= self.waiters.add(run.namespace, kind, thing, key, waiters_version)
        if missed and self._loop is not None:
            self._loop.call_soon_threadsafe(self.queue.add, key)
        return Result(requeue_after=done.wake_at)

    def _let_go(self, key: RunKey, body: dict[str, Any]) -> None:
        """A Run being deleted: its Jobs go with it (owner references); the audit finalizer
        goes once the mirror has stored everything (the mirror's write wakes us)."""
        finalizers = body["metadata"].get("finalizers") or []
        if AUDIT_FINALIZER not in finalizers:
            return
        if self.mirror is not None and observe.pending_audit(body):
            return  # without a mirror nobody would ever store them: let go at once
        remaining = [f for f in finalizers if f != AUDIT_FINALIZER]
        self.kube.set_finalizers("runs", *key, remaining, body["metadata"]["resourceVersion"])

    def report_failure(self, key: RunKey, error: Exception, retry: Retry) -> None:
        run_failures.report_failure(self.kube, self._carry_out, key, error, retry)
