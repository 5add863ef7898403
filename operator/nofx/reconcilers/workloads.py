"""Kueue's Workloads in Kopf, registered only when the operator runs with Kueue (--kueue): an
index of what Kueue says of each step Job (admitted, or why not), and the events that wake the
Job's Run, so a step shows Queued with Kueue's message and becomes Running once admitted. A
Workload names only its Job; the step Job watch (step_jobs.py) knows the Job's Run."""

from __future__ import annotations

from typing import Any

import kopf

from nofx.builders.workload_status import observe_workload, workload_job
from nofx.reconcilers import context

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
INDEX = "workloads_by_job"


async def workloads_by_job(namespace: Any, body: kopf.Body, **_: Any) -> Any:
    job = workload_job(dict(body))
    return {(namespace, job): observe_workload(dict(body))} if job else {}


async def workload_event(namespace: Any, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    job = workload_job(dict(body))
    ctx = context.of(memo)
    run = ctx.watched.step_jobs.run_of_job(namespace, job) if job else None
    if run:
        ctx.runs.trigger((namespace, run))


def register() -> None:
    """Adds the handlers above to Kopf's registry (before kopf.run)."""
    kopf.index(GROUP, VERSION, "workloads")(workloads_by_job)
    kopf.on.event(GROUP, VERSION, "workloads")(workload_event)
