"""A Job and its Pod read back as what the planner needs to know: the attempt's state, why it
failed, its timings, its outputs (the agent container's termination message)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from nofx.builders.job import CONTAINER_NAME
from nofx.builders.labels import ATTEMPT_LABEL, INDEX_LABEL, QUEUE_LABEL, STEP_LABEL
from nofx.planner.facts import JobObservation, JobState


def observe_job(job: dict[str, Any]) -> JobObservation:
    """The Job's own view: state from its conditions (the Pod details come separately)."""
    labels = job["metadata"].get("labels") or {}
    status = job.get("status") or {}
    state: JobState = "Active"
    reason = message = None
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition["type"] == "Complete":
            state = "Succeeded"
        elif condition["type"] == "Failed":
            state, reason, message = "Failed", condition.get("reason"), condition.get("message")
    index = labels.get(INDEX_LABEL)
    pods = ("active", "ready", "succeeded", "failed", "terminating")
    return JobObservation(
        name=job["metadata"]["name"],
        step=labels.get(STEP_LABEL, ""),
        index=int(index) if index is not None else None,
        attempt=int(labels.get(ATTEMPT_LABEL, "0")),
        state=state,
        reason=reason,
        message=message,
        started_at=parse_time(status.get("startTime")),
        finished_at=parse_time(status.get("completionTime")),
        created_at=parse_time(job["metadata"].get("creationTimestamp")),
        pods_started=any(status.get(count) for count in pods) or state != "Active",
        queue_name=labels.get(QUEUE_LABEL),
        suspended=bool((job.get("spec") or {}).get("suspend")),
    )


def with_pod(observation: JobObservation, pod: dict[str, Any] | None) -> JobObservation:
    """Adds the termination message, exit code and container times of the Job's Pod."""
    if pod is None:
        return observation
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        terminated = (container.get("state") or {}).get("terminated")
        if not terminated:
            return observation
        return replace(
            observation,
            pod_read=True,
            termination_message=terminated.get("message"),
            exit_code=terminated.get("exitCode"),
            started_at=parse_time(terminated.get("startedAt")) or observation.started_at,
            finished_at=parse_time(terminated.get("finishedAt")) or observation.finished_at,
        )
    return observation


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
