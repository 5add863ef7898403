"""What the Run reconciler knows of a Run before it decides: a copy of what the operator's
watches hold for it (watched.py), completed by reads they cannot answer (the Pod of a finished Job
the Pod watch did not see, why a Job has no Pod, a child Run or Job missing from them), and
the Run itself as plain data."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from nofx import metrics
from nofx.api.agent import AgentSpec
from nofx.api.run import (
    STARTED_STEP_PHASES,
    TERMINAL_STEP_PHASES,
    AuditOutbox,
    RunSpec,
    RunStatus,
)
from nofx.api.template import TemplateSpec
from nofx.builders.job_status import observe_job, with_pod
from nofx.builders.labels import DEPTH_LABEL, ROOT_LABEL, label_value
from nofx.builders.ownership import owning_run
from nofx.kube import Kube
from nofx.planner.attempts import POD_START_CHECK
from nofx.planner.facts import ChildRunObservation, JobObservation, RunView
from nofx.planner.naming import job_name
from nofx.reconcilers.step_pods import StepPods
from nofx.reconcilers.watched import Watched

RunKey = tuple[str, str]  # (namespace, name)


@dataclass
class Observed:
    """What the watches held for one Run when its pass began."""

    jobs: dict[str, JobObservation]
    child_runs: dict[str, ChildRunObservation]
    agents: dict[str, AgentSpec]
    templates: dict[str, TemplateSpec | None]  # None: exists, but its spec is invalid
    active_jobs: dict[str, set[str]]  # agent name → names of its unfinished Jobs
    waiters_version: int


def observe(watched: Watched, key: RunKey, waiters_version: int) -> Observed:
    """A copy of what the watches hold for one Run, taken when its pass begins."""
    namespace = key[0]
    jobs = watched.step_jobs.of_run(*key)
    if watched.workloads is not None:  # only with Kueue
        for name, job in jobs.items():
            if job.queue_name:
                admission = next(iter(watched.workloads.get((namespace, name), [])), None)
                jobs[name] = replace(job, admission=admission)
    children = {c.name: c for c in watched.runs.children_of(*key)}
    agents = watched.agents.valid(namespace)
    active = {
        agent: watched.step_jobs.active_of_agent(namespace, label_value(agent))
        for agent, spec in agents.items()
        if spec.max_concurrent_steps is not None
    }
    templates = watched.templates.of(namespace)
    return Observed(jobs, children, agents, templates, active, waiters_version)


def complete_jobs(
    kube: Kube,
    run: RunView,
    indexed: dict[str, JobObservation],
    now: datetime,
    step_pods: StepPods | None = None,
) -> dict[str, JobObservation]:
    """Adds what the step Job watch cannot know: the Pod of every finished Job a step may
    read now (outputs and exit codes live only there), why a Job has no Pod, and whether a
    Job missing from the watch is only late there, or gone.

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
        if entry.phase in STARTED_STEP_PHASES and entry.job_name:
            wanted[entry.job_name] = entry.name
    for name, step_of_current in wanted.items():
        job = jobs.get(name)
        if job is None and step_of_current is not None:
            stored = kube.get_job(namespace, name)
            job = observe_job(stored) if stored else _missing(name, step_of_current)
        if job is None:
            continue
        if job.state in ("Succeeded", "Failed"):
            job = with_pod(job, finished_pod(kube, step_pods, namespace, job))
        elif job.state == "Active" and _waits_for_pod(job, now):
            job = replace(job, pod_create_error=kube.pod_create_error(namespace, name))
        jobs[name] = job
    return jobs


def finished_pod(
    kube: Kube, step_pods: StepPods | None, namespace: str, job: JobObservation
) -> dict[str, Any] | None:
    """The Pod of a finished Job: from the Pod watch if it saw the one that succeeded, else
    listed (a failed Job's Pods may be several, after a Kueue eviction: the list decides)."""
    if job.state == "Succeeded" and step_pods is not None:
        pod = step_pods.succeeded(namespace, job.name)
        if pod is not None:
            metrics.STEP_POD_READS.labels("watch").inc()
            return pod
    metrics.STEP_POD_READS.labels("list").inc()
    return kube.job_pod(namespace, job.name)


def complete_children(
    kube: Kube, namespace: str, status: RunStatus, indexed: dict[str, ChildRunObservation]
) -> dict[str, ChildRunObservation]:
    """Tells a child Run the index has not seen yet from one that was deleted."""
    children = dict(indexed)
    for entry in status.steps or []:
        name = entry.child_run_name
        if entry.phase != "Running" or not name or name in children:
            continue
        stored = kube.get("runs", namespace, name)
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


def _waits_for_pod(job: JobObservation, now: datetime) -> bool:
    """A Job without a Pod for longer than it normally takes to get one."""
    return (
        not job.pods_started
        and not job.queued  # Kueue's Workload says why, not the Job controller
        and job.created_at is not None
        and now - job.created_at >= POD_START_CHECK
    )


def view(key: RunKey, body: dict[str, Any], spec: RunSpec, status: RunStatus) -> RunView:
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


def audit_outbox(body: dict[str, Any]) -> AuditOutbox | None:
    """The audit outbox of a status that does not validate as a whole, if it still does."""
    try:
        return AuditOutbox.model_validate(((body.get("status") or {}).get("audit")) or None)
    except ValidationError:
        return None


def pending_audit(body: dict[str, Any]) -> bool:
    return bool(((body.get("status") or {}).get("audit") or {}).get("pending"))


def _missing(job_name: str, step: str) -> JobObservation:
    return JobObservation(name=job_name, step=step, index=None, attempt=0, state="Missing")


def pinned_agents(status: RunStatus) -> dict[str, AgentSpec]:
    assert status.pinned is not None
    return {
        name: AgentSpec.model_validate(agent.spec)
        for name, agent in (status.pinned.agents or {}).items()
    }


def slot_limits(pinned: dict[str, AgentSpec], current: dict[str, AgentSpec]) -> dict[str, int]:
    """maxConcurrentSteps of the Agents this Run may use. The limit is a property of the
    cluster's Agent (it protects a shared resource), so the current spec wins over the pin."""
    limits = {}
    for name, spec in pinned.items():
        agent = current.get(name, spec)
        if agent.max_concurrent_steps is not None:
            limits[name] = agent.max_concurrent_steps
    return limits
