"""Runs in Kopf: the in-memory indexes the Run reconciler reads (child Runs by parent and by
root) and the events that trigger it. Step Jobs have a watch of their own (step_jobs.py); the
reconciling itself is in run_reconciler.py.

Index functions are coroutines though they never wait: Kopf runs a plain function in a thread
of the executor, a hop that cost more of the event loop's time than the indexing itself."""

from __future__ import annotations

from typing import Any

import kopf

from nofx.api.common import GROUP, VERSION
from nofx.builders.labels import PARENT_LABEL, ROOT_LABEL
from nofx.builders.ownership import owning_run
from nofx.planner.facts import ChildRunObservation
from nofx.reconcilers import context


@kopf.index(GROUP, VERSION, "runs", labels={PARENT_LABEL: kopf.PRESENT})
async def child_runs_by_parent(
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
async def child_runs_by_root(namespace: Any, name: Any, labels: kopf.Labels, **_: Any) -> Any:
    """How many child Runs each tree holds, at every depth (bounded per root Run)."""
    return {(namespace, labels[ROOT_LABEL]): name}


@kopf.on.event(GROUP, VERSION, "runs")
async def run_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: Any,
    name: Any,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    key = (namespace, name)
    ctx = context.of(memo)
    parent = owning_run(body)
    if event["type"] == "DELETED":
        ctx.runs.forget(key)
    else:
        if ctx.mirror is not None and (body.get("status") or {}).get("audit", {}).get("pending"):
            ctx.mirror.offer_run(body)
        ctx.runs.changed(key, dict(body))
    if parent:
        ctx.runs.trigger((namespace, parent))
