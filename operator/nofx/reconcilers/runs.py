"""Runs and their Jobs in Kopf: the in-memory indexes the Run reconciler reads (step Jobs by
Run and by Agent, child Runs by parent and by root) and the events that trigger it.
The reconciling itself is in run_reconciler.py.

Index functions are coroutines though they never wait: Kopf runs a plain function in a thread
of the executor, a hop that cost more of the event loop's time than the indexing itself."""

from __future__ import annotations

from typing import Any

import kopf

from nofx.api.common import GROUP, VERSION
from nofx.builders.job_status import observe_job
from nofx.builders.labels import AGENT_LABEL, PARENT_LABEL, ROOT_LABEL, RUN_LABEL
from nofx.builders.ownership import owning_run
from nofx.planner.facts import ChildRunObservation
from nofx.reconcilers import context


@kopf.index("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
async def step_jobs(
    namespace: Any, name: Any, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> Any:
    """Every step Job under its Run, ("run", namespace, run) → what the Job shows, and while
    it is unfinished under its Agent, ("agent", namespace, agent label) → its name; a Job of a
    Kueue queue also by its name, ("job", namespace, name) → its Run (a Workload names only
    its Job). One index rather than several: each is a handler call on every event of every
    Job."""
    job = observe_job(dict(body))
    entries: dict[tuple[str, str, str], Any] = {}
    owner = owning_run(body)
    if owner:
        entries[("run", namespace, owner)] = job
    agent = labels.get(AGENT_LABEL)
    if agent and job.state == "Active":
        entries[("agent", namespace, agent)] = name
    if owner and job.queue_name:
        entries[("job", namespace, name)] = owner
    return entries  # not None: Kopf keeps an object's previous entries when it gets None


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


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
async def job_event(
    event: kopf.RawEvent,
    body: kopf.Body,
    namespace: Any,
    name: Any,
    labels: kopf.Labels,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    ctx = context.of(memo)
    agent = labels.get(AGENT_LABEL)
    state = observe_job(dict(body)).state
    if event["type"] == "DELETED" or state != "Active":
        ctx.runs.slots.release(namespace, agent, name)
        if agent:
            ctx.runs.trigger_soon(ctx.runs.waiters.pop(namespace, "AgentSlot", agent))
        owner = owning_run(body)
        if owner:
            ctx.runs.trigger((namespace, owner))
