"""Schedules in Kopf: an index of each Schedule's Runs, and a small work queue whose timer wakes
each Schedule at its nextScheduleTime (a Kopf daemon or timer would put a finalizer on every
Schedule). A pass reads the snapshot, decides (nofx.scheduling.decide) and carries it out:
create, cancel, delete Runs, then write status once if it changed."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from pydantic import ValidationError

from nofx.api.common import GROUP, VERSION
from nofx.api.schedule import SCHEDULE_LABEL, ScheduleSpec, ScheduleStatus, schedule_of
from nofx.builders.scheduled_run import build_scheduled_run, scheduled_time
from nofx.kube import Kube
from nofx.reconcilers import context, status_patch
from nofx.scheduling.decide import ScheduledRunView, ScheduleFacts, SchedulePlan, decide
from nofx.workqueue import Backoff, LoopClock, Result, Retry, Timers, WorkQueue, worker

log = logging.getLogger("nofx.schedules")

ScheduleKey = tuple[str, str]  # (namespace, name)
# A timer may fire a little before the minute it was set for; this keeps it from firing twice.
TIMER_SLACK = timedelta(milliseconds=100)
WORKERS = 2  # a pass is a few API calls at most once a minute per Schedule


class ScheduleReconciler:
    def __init__(self, kube: Kube, indexes: dict[str, Any]) -> None:
        self.kube = kube
        self.indexes = indexes
        self.bodies: dict[ScheduleKey, dict[str, Any]] = {}  # the newest body seen or written
        self.queue: WorkQueue[ScheduleKey, None] = WorkQueue()
        self.backoff: Backoff[ScheduleKey] = Backoff()
        self.timers: Timers[ScheduleKey] = Timers(LoopClock(), self.queue.add)
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(
                worker(self.queue, self.timers, self.backoff, self.reconcile, self._failed)
            )
            for _ in range(WORKERS)
        ]

    async def stop(self) -> None:
        self.timers.close()
        await self.queue.drain(drop_waiting=True)
        await asyncio.gather(*self._workers, return_exceptions=True)

    def changed(self, key: ScheduleKey, body: dict[str, Any]) -> None:
        self.bodies[key] = body
        self.queue.add(key)

    def trigger(self, key: ScheduleKey) -> None:
        if key in self.bodies:
            self.queue.add(key)

    def forget(self, key: ScheduleKey) -> None:
        self.bodies.pop(key, None)
        self.backoff.forget(key)
        self.timers.cancel(key)

    async def reconcile(self, key: ScheduleKey, _: None) -> Result:
        body = self.bodies.get(key)
        if body is None:
            return Result()
        # Copied on the loop's thread, where Kopf updates its indexes.
        runs = tuple(self.indexes["runs_by_schedule"].get(key, []))
        return await asyncio.to_thread(self._reconcile, key, body, runs)

    async def _failed(self, key: ScheduleKey, error: Exception, retry: Retry) -> None:
        log.warning(
            "schedule pass failed, retrying",
            extra={"schedule": "/".join(key), "error": str(error), "delay": str(retry.delay)},
        )

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
        self._carry_out(body, spec, plan)
        new_status = plan.status.to_dict()
        if new_status != (body.get("status") or {}):
            stored = self.kube.patch_status("schedules", *key, _replacing(body, new_status))
            if stored is not None:
                self.bodies[key] = stored
        return Result(plan.wake_at + TIMER_SLACK if plan.wake_at else None)

    def _carry_out(self, body: dict[str, Any], spec: ScheduleSpec, plan: SchedulePlan) -> None:
        namespace = body["metadata"]["namespace"]
        for name in plan.cancel:
            self.kube.patch_spec("runs", namespace, name, {"cancel": True})
            log.info("cancelled a Run to replace it", extra={"run": f"{namespace}/{name}"})
        if plan.start is not None:
            run = build_scheduled_run(
                body, spec.run_template, plan.start.name, plan.start.scheduled_at
            )
            # False: it exists, started by a pass before a restart; a second start is a no-op.
            if self.kube.create("runs", namespace, run):
                log.info("started a scheduled Run", extra={"run": f"{namespace}/{plan.start.name}"})
                self.kube.create_event(
                    _involved(body),
                    "Normal",
                    "Started",
                    f"started Run {plan.start.name} for {plan.start.scheduled_at.isoformat()}",
                )
        for name in plan.delete:
            self.kube.delete("runs", namespace, name)


def _replacing(body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """A merge patch that sets status to exactly `status`: fields it lost become null."""
    return {**{field: None for field in body.get("status") or {}}, **status}


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


@kopf.index(GROUP, VERSION, "runs", labels={SCHEDULE_LABEL: kopf.PRESENT})
async def runs_by_schedule(
    namespace: Any, name: Any, body: kopf.Body, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> Any:
    schedule = schedule_of(body.get("metadata", {}))
    if schedule is None:
        return {}  # labelled by hand: not the Schedule's to count or delete
    view = ScheduledRunView(
        name=name,
        phase=status.get("phase"),
        scheduled_at=scheduled_time(body),
        cancel=bool(spec.get("cancel")),
    )
    return {(namespace, schedule): view}


@kopf.on.event(GROUP, VERSION, "schedules")
async def schedule_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: Any, name: Any, memo: kopf.Memo, **_: Any
) -> None:
    schedules = context.of(memo).schedules
    if event["type"] == "DELETED":
        schedules.forget((namespace, name))
    else:
        schedules.changed((namespace, name), dict(body))


@kopf.on.event(GROUP, VERSION, "runs", labels={SCHEDULE_LABEL: kopf.PRESENT})
async def scheduled_run_event(body: kopf.Body, namespace: Any, memo: kopf.Memo, **_: Any) -> None:
    """A Run that finished (or went) may let a Forbid Schedule start, or exceed a history limit."""
    schedule = schedule_of(body.get("metadata", {}))
    if schedule is not None:
        context.of(memo).schedules.trigger((namespace, schedule))
