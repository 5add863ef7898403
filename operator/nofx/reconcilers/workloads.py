"""Kueue's Workloads in Kopf, registered only when the operator runs with Kueue (--kueue): an
index of what Kueue says of each step Job (admitted, or why not), and the events that wake the
Job's Run, so a step shows Queued with Kueue's message and becomes Running once admitted. A Job's
Run is found through an index of step Jobs by name, as a Workload names only its Job."""

from __future__ import annotations

from typing import Any

import kopf

from nofx.builders.labels import QUEUE_LABEL, RUN_LABEL
from nofx.builders.ownership import owning_run
from nofx.builders.workload_status import observe_workload, workload_job
from nofx.reconcilers import context

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
INDEXES = ("workloads_by_job", "runs_by_queued_job")


def workloads_by_job(namespace: Any, body: kopf.Body, **_: Any) -> Any:
    job = workload_job(dict(body))
    return {(namespace, job): observe_workload(dict(body))} if job else {}


def runs_by_queued_job(namespace: Any, name: Any, body: kopf.Body, **_: Any) -> Any:
    owner = owning_run(body)
    return {(namespace, name): owner} if owner else {}


async def workload_event(namespace: Any, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    job = workload_job(dict(body))
    ctx = context.of(memo)
    for run in ctx.indexes["runs_by_queued_job"].get((namespace, job), []):
        ctx.runs.trigger((namespace, run))


def register() -> None:
    """Adds the handlers above to Kopf's registry (before kopf.run)."""
    kopf.index(GROUP, VERSION, "workloads")(workloads_by_job)
    kopf.on.event(GROUP, VERSION, "workloads")(workload_event)
    queued_jobs = {RUN_LABEL: kopf.PRESENT, QUEUE_LABEL: kopf.PRESENT}
    kopf.index("batch", "v1", "jobs", labels=queued_jobs)(runs_by_queued_job)
