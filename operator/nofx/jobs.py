"""Step attempt → Kubernetes Job, and Job (+ its Pod) → what happened. Pure functions."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from nofx.api.agent import AgentSpec
from nofx.api.common import API_VERSION, parse_duration

LABEL_PREFIX = "nofx.dev/"
RUN_LABEL = "nofx.dev/run"
STEP_LABEL = "nofx.dev/step"
ATTEMPT_LABEL = "nofx.dev/attempt"
AGENT_LABEL = "nofx.dev/agent"
ACCOUNT_LABEL = "nofx.dev/account"
INDEX_LABEL = "nofx.dev/index"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nofx-operator"}
CONTAINER_NAME = "agent"
# Non-root identity for images that do not set one: the restricted Pod Security Standard
# requires runAsNonRoot, and an explicit uid makes that hold for any image.
RUN_AS_USER = 65532
MAX_NAME = 63  # Job names end up in the job-name label of their Pods
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """text itself when it is a valid label value; else a readable prefix and a hash of it
    (names may be 253 characters long, accounts may contain ':', '/' or '@')."""
    if len(text) <= 63 and LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    prefix = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:52].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest


def job_name(run_name: str, run_uid: str, step: str, index: int | None, attempt: int) -> str:
    """Deterministic per step attempt, so a restarted operator finds (or re-creates with a
    409) the same Job instead of starting the attempt twice. The hash of the Run's uid keeps a
    re-created Run of the same name apart from the Jobs of its predecessor."""
    key = f"{run_uid}/{step}/{'' if index is None else index}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:6]
    item = "" if index is None else f"-{index}"
    tail = f"-{step}{item}-{digest}-{attempt}"
    head = run_name[: MAX_NAME - len(tail)].rstrip("-.")
    return head + tail


@dataclass(frozen=True)
class RunRef:
    name: str
    namespace: str
    uid: str
    account: str


@dataclass(frozen=True)
class JobRequest:
    """One step attempt that should run now."""

    step: str
    index: int | None
    attempt: int
    agent_name: str
    agent: AgentSpec
    inputs: dict[str, Any]
    item: Any
    timeout_seconds: int | None
    job_name: str


def build_job(run: RunRef, request: JobRequest) -> dict[str, Any]:
    agent = request.agent
    labels = {
        RUN_LABEL: label_value(run.name),
        STEP_LABEL: request.step,
        ATTEMPT_LABEL: str(request.attempt),
        AGENT_LABEL: label_value(request.agent_name),
        ACCOUNT_LABEL: label_value(run.account),
        **MANAGED_BY,
    }
    if request.index is not None:
        labels[INDEX_LABEL] = str(request.index)
    pod_labels = {**(agent.pod_labels or {}), **labels}
    spec: dict[str, Any] = {
        "backoffLimit": 0,  # retries are the operator's: each attempt is its own audited Job
        "template": {
            "metadata": {"labels": pod_labels, "annotations": dict(agent.pod_annotations or {})},
            "spec": _pod_spec(run, request),
        },
    }
    if request.timeout_seconds:
        spec["activeDeadlineSeconds"] = request.timeout_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": request.job_name,
            "namespace": run.namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Run",
                    "name": run.name,
                    "uid": run.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def _pod_spec(run: RunRef, request: JobRequest) -> dict[str, Any]:
    agent = request.agent
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": agent.image,
        "env": _env(run, request),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "terminationMessagePolicy": "File",
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "workspace", "mountPath": "/workspace"},
        ],
        "workingDir": "/workspace",
    }
    if agent.command:
        container["command"] = list(agent.command)
    if agent.args:
        container["args"] = list(agent.args)
    if agent.env_from:
        container["envFrom"] = [source.to_dict() for source in agent.env_from]
    if agent.resources:
        container["resources"] = agent.resources.to_dict()
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "workspace", "emptyDir": {}}],
    }
    if agent.service_account_name:
        pod["serviceAccountName"] = agent.service_account_name
    return pod


def _env(run: RunRef, request: JobRequest) -> list[dict[str, Any]]:
    agent = request.agent
    env: list[dict[str, Any]] = [
        {"name": "NOFX_RUN", "value": run.name},
        {"name": "NOFX_STEP", "value": request.step},
        {"name": "NOFX_ATTEMPT", "value": str(request.attempt)},
        {"name": "NOFX_INPUTS", "value": json.dumps(request.inputs, separators=(",", ":"))},
    ]
    if request.index is not None:
        env.append({"name": "NOFX_ITEM", "value": json.dumps(request.item)})
        env.append({"name": "NOFX_INDEX", "value": str(request.index)})
    if agent.skills:
        env.append({"name": "NOFX_SKILLS", "value": ",".join(agent.skills)})
    if agent.tools:
        env.append({"name": "NOFX_ALLOWED_TOOLS", "value": ",".join(agent.tools)})
    if agent.model:
        env.append({"name": "NOFX_MODEL_PROVIDER", "value": agent.model.provider})
        env.append({"name": "NOFX_MODEL_NAME", "value": agent.model.name})
        if agent.model.credentials_secret_ref:
            # A reference the kubelet resolves: the secret never passes through the operator.
            ref = agent.model.credentials_secret_ref
            env.append(
                {
                    "name": "NOFX_MODEL_CREDENTIALS",
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    if agent.prompts:
        if agent.prompts.system is not None:
            env.append({"name": "NOFX_SYSTEM_PROMPT", "value": agent.prompts.system})
        elif agent.prompts.config_map_ref:
            ref = agent.prompts.config_map_ref
            env.append(
                {
                    "name": "NOFX_SYSTEM_PROMPT",
                    "valueFrom": {"configMapKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    env.extend(variable.to_dict() for variable in agent.env or [])
    return env


def timeout_seconds(duration: str | None) -> int | None:
    if not duration:
        return None
    return max(1, round(parse_duration(duration).total_seconds()))


JobState = Literal["Active", "Succeeded", "Failed", "Missing"]


@dataclass(frozen=True)
class JobObservation:
    """What the operator knows about one step attempt's Job (and, once finished, its Pod)."""

    name: str
    step: str
    index: int | None
    attempt: int
    state: JobState
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_at: datetime | None = None
    pods_started: bool = False  # the Job controller created a Pod (it may have ended since)
    pod_create_error: str | None = None  # why it could not, from its FailedCreate Events
    # From the Pod's agent container, read once when the Job finished:
    pod_read: bool = False  # its terminated state was found: outputs below are what it wrote
    termination_message: str | None = None
    exit_code: int | None = None


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
        started_at=_time(status.get("startTime")),
        finished_at=_time(status.get("completionTime")),
        created_at=_time(job["metadata"].get("creationTimestamp")),
        pods_started=any(status.get(count) for count in pods) or state != "Active",
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
            started_at=_time(terminated.get("startedAt")) or observation.started_at,
            finished_at=_time(terminated.get("finishedAt")) or observation.finished_at,
        )
    return observation


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
