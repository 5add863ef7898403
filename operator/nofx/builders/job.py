"""A step attempt as a Kubernetes Job: owned by its Run, labelled, restricted, with the Agent's
image, resources and environment and the step's inputs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nofx.builders.labels import (
    ACCOUNT_LABEL,
    AGENT_LABEL,
    ATTEMPT_LABEL,
    INDEX_LABEL,
    MANAGED_BY,
    QUEUE_LABEL,
    RUN_LABEL,
    STEP_LABEL,
    label_value,
)
from nofx.builders.ownership import owner_reference
from nofx.planner.facts import JobRequest

CONTAINER_NAME = "agent"
# Non-root identity for images that do not set one: the restricted Pod Security Standard
# requires runAsNonRoot, and an explicit uid makes that hold for any image.
RUN_AS_USER = 65532


@dataclass(frozen=True)
class RunRef:
    name: str
    namespace: str
    uid: str
    account: str


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
    if request.queue_name:
        labels[QUEUE_LABEL] = request.queue_name
    spec: dict[str, Any] = {
        "backoffLimit": 0,  # retries are the operator's: each attempt is its own audited Job
        "template": {
            "metadata": {"labels": pod_labels, "annotations": dict(agent.pod_annotations or {})},
            "spec": _pod_spec(run, request),
        },
    }
    if request.queue_name:
        # Suspended until Kueue admits it; resuming resets the Job's startTime, so
        # activeDeadlineSeconds (the step's timeout) counts from admission.
        spec["suspend"] = True
    if request.timeout_seconds:
        spec["activeDeadlineSeconds"] = request.timeout_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": request.job_name,
            "namespace": run.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(run.name, run.uid)],
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
        "automountServiceAccountToken": agent.automount_service_account_token,
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
