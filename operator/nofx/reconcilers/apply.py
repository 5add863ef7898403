"""Carrying a decision out: create the Jobs and child Runs it asks for (what the API server
refuses becomes an observation for a second decision), stop what it stops, and write the status
with its audit outbox in one write, then Events and metrics. A status the API server refuses
fails the Run with the server's words."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nofx import metrics
from nofx.api.common import API_VERSION
from nofx.api.reasons import Reason
from nofx.api.run import RunStatus
from nofx.api_errors import Rejected
from nofx.builders.child_run import build_child_run
from nofx.builders.job import RunRef, build_job
from nofx.changes import Transition, transitions
from nofx.kube import Kube
from nofx.mirror import outbox
from nofx.mirror.writer import MirrorWriter
from nofx.planner.facts import ChildRunObservation, Decision, JobObservation, JobRequest, RunView
from nofx.planner.stopping import abort_run

log = logging.getLogger("nofx.runs")

RunKey = tuple[str, str]  # (namespace, name)
AUDIT_FINALIZER = "nofx.dev/audit"


def create_children(
    kube: Kube,
    run: RunView,
    body: dict[str, Any],
    decision: Decision,
    jobs: dict[str, JobObservation],
) -> Refused | None:
    """Creates the Jobs and child Runs decided; returns what the API server refused."""
    if not (decision.create_jobs or decision.create_child_runs):
        return None
    refused = Refused()
    account = decision.status.account
    if account is None:  # decide() pins it before anything starts
        raise RuntimeError("a Run without a pinned account cannot start Jobs or child Runs")
    ref = RunRef(run.name, run.namespace, run.uid, account)
    for request in decision.create_jobs:
        extra = {"run": run.name, "step": request.step, "job": request.job_name}
        try:
            created = kube.create_job(build_job(ref, request))
        except Rejected as error:
            log.warning("the API server refused a Job: %s", error.message, extra=extra)
            refused.jobs[request.job_name] = _rejected_job(request.job_name, request, error)
            continue
        if created:
            _observe_latency(body, run, request.step, jobs)
        log.info("created Job" if created else "Job already existed", extra=extra)
    for child in decision.create_child_runs:
        try:
            kube.create("runs", run.namespace, build_child_run(run, account, child))
        except Rejected as error:
            log.warning("the API server refused a child Run: %s", error.message)
            refused.child_runs[child.name] = ChildRunObservation(
                name=child.name, phase="Rejected", message=error.message
            )
    return refused if refused.jobs or refused.child_runs else None


def apply(
    kube: Kube,
    mirror: MirrorWriter | None,
    run: RunView,
    body: dict[str, Any],
    decision: Decision,
    *,
    replace_status: bool = False,
    fail_if_refused: bool = True,
) -> Decision | None:
    """Carries a decision out: the audit finalizer, stopping work, the status (with its
    audit outbox) in one write, then Events and metrics. A status the API server refuses fails
    the Run (fail_if_refused), or is raised to the caller. Returns the decision that was
    carried out (the Run's failure, if its status was refused), None if the Run is gone."""
    key = (run.namespace, run.name)
    if decision.delete_run:
        log.info("deleting finished Run (ttlSecondsAfterFinished)", extra={"run": run.name})
        kube.delete("runs", run.namespace, run.name)
        return None
    changes = transitions(run.status, decision.status)
    stored_keys: set[Any] = set()
    if mirror is not None:
        outbox.record(
            decision.status,
            changes,
            decision.finished_attempts,
            datetime.now(UTC),
            body["metadata"],
            {approval.step: approval.approved_by for approval in run.spec.approvals or []},
        )
    finalizers = body["metadata"].get("finalizers") or []
    if mirror is not None and decision.status.audit and AUDIT_FINALIZER not in finalizers:
        # Held until the mirror stored every event, so deleting a Run loses none of them.
        version = body["metadata"]["resourceVersion"]
        stored = kube.own_writes.write(
            "runs", *key,
            lambda: kube.set_finalizers("runs", *key, [*finalizers, AUDIT_FINALIZER], version),
        )  # fmt: skip
        if stored is None:
            return None
        body = {**body, "metadata": stored["metadata"]}
    # Stop work before recording that it stopped: a crash in between must not leave it.
    for job in decision.delete_jobs:
        kube.delete_job(run.namespace, job)
    for child_name in decision.cancel_child_runs:
        kube.patch_spec("runs", run.namespace, child_name, {"cancel": True})

    new_status = decision.status.to_dict()
    old_status = (body.get("status") or {}) if replace_status else run.status.to_dict()
    if new_status != old_status:
        if mirror is not None:
            # What the mirror stored since goes in this same write; never a write of its own
            # (the mirror acknowledges when the Run ends, or after a while).
            stored_keys = mirror.stored.keys(key, run.uid)
            audit = decision.status.audit
            if stored_keys and audit is not None and audit.pending:
                audit.pending = outbox.acknowledge(audit.pending, stored_keys) or None
                new_status["audit"] = audit.to_dict()
        try:
            stored = patch_status(kube, key, body, new_status, old_status)
        except Rejected as error:
            if not fail_if_refused:
                raise
            return _status_refused(kube, mirror, run, body, decision, error)
        if stored is None:
            return None
        if mirror is not None and stored_keys:
            mirror.stored.removed(key, run.uid, stored_keys)
        involved = _involved(body)
        for change in changes:
            if change.announced:
                _post_event(kube, involved, change)
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
        metrics.count_attempt(run.namespace, attempt)
    for wait in decision.queue_waits:
        metrics.STEP_QUEUE_SECONDS.observe(wait)
    metrics.set_run_phase(key, decision.status.phase)
    return decision


def _involved(body: dict[str, Any]) -> dict[str, Any]:
    metadata = body["metadata"]
    return {
        "apiVersion": body.get("apiVersion", API_VERSION),
        "kind": "Run",
        "name": metadata["name"],
        "namespace": metadata["namespace"],
        "uid": metadata["uid"],
    }


def _post_event(kube: Kube, involved: dict[str, Any], change: Transition) -> None:
    """An Event on the Run for one transition. Posted after the status that made it true; a
    failure to post loses only this Event (the status and the audit trail hold the change)."""
    try:
        kube.create_event(
            involved,
            "Warning" if change.warning else "Normal",
            change.reason,
            change.message[:1000],
        )
    except Exception as error:
        log.warning("could not post an Event: %s", error, extra={"run": involved["name"]})


def patch_status(
    kube: Kube,
    key: RunKey,
    body: dict[str, Any],
    status: dict[str, Any],
    previous: dict[str, Any],
) -> dict[str, Any] | None:
    """Writes the status given, whose fields were `previous` at the body's resourceVersion: a
    merge patch of the top-level fields that changed (the pinned specs rarely do), with null for
    every field it dropped."""
    changed = {field: value for field, value in status.items() if previous.get(field) != value}
    dropped = {field: None for field in previous if field not in status}
    version = body["metadata"]["resourceVersion"]
    return kube.own_writes.write(
        "runs", *key, lambda: kube.patch_status("runs", *key, {**changed, **dropped}, version)
    )


def _status_refused(
    kube: Kube,
    mirror: MirrorWriter | None,
    run: RunView,
    body: dict[str, Any],
    decision: Decision,
    error: Rejected,
) -> Decision | None:
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
        return apply(kube, mirror, run, body, failure(), fail_if_refused=False)
    except Rejected:
        # Raised again if refused even now: the error budget retries it with backoff.
        least = failure()
        least.status = _only_the_failure(least.status)
        return apply(kube, mirror, run, body, least, replace_status=True, fail_if_refused=False)


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
