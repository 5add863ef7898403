"""Schedules: their events come from Kopf, their Runs from the Run watch (run_watch.py), and a
small work queue's timer wakes each Schedule at its nextScheduleTime (a Kopf daemon or timer
would put a finalizer on every Schedule). A pass reads the snapshot, decides
(nofx.scheduling.decide) and carries it out: create, cancel, delete Runs, then write status
once if it changed."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from nofx.api.common import GROUP, VERSION
from nofx.api.schedule import SCHEDULE_LABEL, ScheduleSpec, ScheduleStatus, schedule_of
from nofx.api_errors import Rejected
from nofx.builders.scheduled_run import build_scheduled_run
from nofx.kube import Kube
from nofx.reconcilers import context, status_patch
from nofx.reconcilers.errors import failures_before_showing, is_transient
from nofx.reconcilers.run_watch import RunWatch
from nofx.scheduling.decide import (
    ScheduledRunView,
    ScheduleFacts,
    SchedulePlan,
    ScheduleReason,
    decide,
    refused,
)
from nofx.workqueue import Result, Retry, WorkerPool

log = logging.getLogger("nofx.schedules")

ScheduleKey = tuple[str, str]  # (namespace, name)
# A timer may fire a little before the minute it was set for; this keeps it from firing twice.
TIMER_SLACK = timedelta(milliseconds=100)
WORKERS = 2  # a pass is a few API calls at most once a minute per Schedule


class ScheduleReconciler:
    def __init__(self, kube: Kube, runs: RunWatch) -> None:
        self.kube = kube
        self.runs = runs
        self.bodies: dict[ScheduleKey, dict[str, Any]] = {}  # the newest body seen or written
        self.workers: WorkerPool[ScheduleKey, None] = WorkerPool(self.reconcile, self._failed)
        self.queue, self.timers = self.workers.queue, self.workers.timers
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.workers.start(WORKERS)

    async def stop(self) -> None:
        await self.workers.stop()

    def changed(self, key: ScheduleKey, body: dict[str, Any]) -> None:
        self.bodies[key] = body
        self.queue.add(key)

    def trigger(self, key: ScheduleKey) -> None:
        if key in self.bodies:
            self.queue.add(key)

    def forget(self, key: ScheduleKey) -> None:
        self.bodies.pop(key, None)
        self.workers.forget(key)

    def run_changed(self, kind: str, body: dict[str, Any]) -> None:
        """A Run the watch saw change (on its thread). A Schedule's Run that finished or went
        may let a Forbid Schedule start, or exceed a history limit."""
        metadata = body["metadata"]
        labelled = SCHEDULE_LABEL in (metadata.get("labels") or {})
        schedule = schedule_of(metadata) if labelled else None
        if schedule is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.trigger, (metadata["namespace"], schedule))

    async def reconcile(self, key: ScheduleKey, _: None) -> Result:
        body = self.bodies.get(key)
        if body is None:
            return Result()
        if not self.runs.is_listed():  # Runs unknown: it could start one again
            await asyncio.to_thread(self.runs.wait_listed)
        runs = self.runs.scheduled_runs(*key)
        return await asyncio.to_thread(self._reconcile, key, body, runs)

    async def _failed(self, key: ScheduleKey, error: Exception, retry: Retry) -> None:
        log.warning(
            "schedule pass failed, retrying",
            extra={"schedule": "/".join(key), "error": str(error), "delay": str(retry.delay)},
        )
        body = self.bodies.get(key)
        if body is not None and retry.failures >= failures_before_showing(is_transient(error)):
            await asyncio.to_thread(self._show_failure, body, error, retry)

    def _show_failure(self, body: dict[str, Any], error: Exception, retry: Retry) -> None:
        """Retried for as long as it fails, but not in silence: a Warning Event on the
        Schedule says why (Kubernetes folds the repeats into one Event with a count)."""
        message = (
            f"the operator failed on this Schedule {retry.failures} times, retrying in "
            f"{retry.delay.total_seconds():.0f}s: {type(error).__name__}: {error}"
        )[:1000]
        try:
            self.kube.create_event(_involved(body), "Warning", "ReconcileError", message)
        except Exception as shown:  # the API server is what fails: the log has it
            log.warning("cannot post the Event: %s", shown, extra={"schedule": _name(body)})

    # --- one pass (worker thread) ---

    def _reconcile(
        self, key: ScheduleKey, body: dict[str, Any], runs: tuple[ScheduledRunView, ...]
    ) -> Result:
        metadata = body["metadata"]
        try:
            spec = ScheduleSpec.model_validate(body.get("spec") or {})
            status = ScheduleStatus.model_validate(body.get("status") or {})
        except ValidationError as error:
            # The API server checks the same rules; this is a Schedule stored before them.
            status_patch.apply(
                self.kube, "schedules", body, ready=False, reason="InvalidSpec", message=str(error)
            )
            return Result()
        facts = ScheduleFacts(
            name=metadata["name"],
            spec=spec,
            status=status,
            generation=metadata.get("generation"),
            created_at=datetime.fromisoformat(metadata["creationTimestamp"]),
            now=datetime.now(UTC),
            runs=runs,
        )
        plan = decide(facts)
        self._carry_out(body, spec, plan, facts.now)
        new_status = plan.status.to_dict()
        if new_status != (body.get("status") or {}):
            stored = self.kube.patch_status("schedules", *key, _replacing(body, new_status))
            if stored is not None:
                self.bodies[key] = stored
        return Result(plan.wake_at + TIMER_SLACK if plan.wake_at else None)

    def _carry_out(
        self, body: dict[str, Any], spec: ScheduleSpec, plan: SchedulePlan, now: datetime
    ) -> None:
        namespace = body["metadata"]["namespace"]
        for name in plan.cancel:
            self.kube.patch_spec("runs", namespace, name, {"cancel": True})
            log.info("cancelled a Run to replace it", extra={"run": f"{namespace}/{name}"})
        if plan.start is not None:
            self._start(body, spec, plan, now)
        for name in plan.delete:
            self.kube.delete("runs", namespace, name)

    def _start(
        self, body: dict[str, Any], spec: ScheduleSpec, plan: SchedulePlan, now: datetime
    ) -> None:
        assert plan.start is not None
        name, at = plan.start.name, plan.start.scheduled_at
        namespace = body["metadata"]["namespace"]
        run = build_scheduled_run(body, spec.run_template, name, at)
        try:
            created = self.kube.create("runs", namespace, run)
        except Rejected as error:
            refused(plan, error.message, now)
            log.warning("the API server refused a scheduled Run: %s", error.message,
                        extra={"run": f"{namespace}/{name}"})  # fmt: skip
            message = f"the API server refused Run {name}: {error.message}"[:1000]
            self.kube.create_event(_involved(body), "Warning", ScheduleReason.RUN_REJECTED, message)
            return
        if not created:
            return  # it exists: a pass before a restart started it
        log.info("started a scheduled Run", extra={"run": f"{namespace}/{name}"})
        self.kube.create_event(
            _involved(body), "Normal", "Started", f"started Run {name} for {at.isoformat()}"
        )


def _replacing(body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that sets status to exactly `status`: fields it lost become null."""
    return {**{field: None for field in body.get("status") or {}}, **status}


def _name(body: dict[str, Any]) -> str:
    return f"{body['metadata']['namespace']}/{body['metadata']['name']}"


def _involved(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": "Schedule",
        "name": metadata["name"],
        "namespace": metadata["namespace"],
        "uid": metadata["uid"],
    }


# --- Kopf handlers ---


@kopf.on.event(GROUP, VERSION, "schedules")
async def schedule_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: Any, name: Any, memo: kopf.Memo, **_: Any
) -> None:
    schedules = context.of(memo).schedules
    if event["type"] == "DELETED":
        schedules.forget((namespace, name))
    else:
        schedules.changed((namespace, name), dict(body))
