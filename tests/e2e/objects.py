"""Builders for the Agents, Templates and Runs the end-to-end tests apply. Step outcomes are
set through kwok annotations on the Agent's Pods (see nofx_dev/kwok-stages.yaml)."""

from __future__ import annotations

import json
from typing import Any

from ..conftest import Kubectl

ECHO = {"kwok.nofx.dev/echo-inputs": "true"}


def agent(name: str, annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": name},
        "spec": {
            "image": f"example.invalid/{name}:1",
            "podAnnotations": {**ECHO, **(annotations or {})},
            **spec,
        },
    }


def step(name: str, agent_name: str = "echo", **fields: Any) -> dict[str, Any]:
    return {"name": name, "agentRef": {"name": agent_name}, **fields}


def template(name: str, steps: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Template",
        "metadata": {"name": name},
        "spec": {"steps": steps, **spec},
    }


def run(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Run",
        "metadata": {"name": name},
        "spec": spec,
    }


def apply(kubectl: Kubectl, namespace: str, *objects: dict[str, Any]) -> None:
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl("apply", "-n", namespace, "-f", "-", input=document)


def steps_by_name(run_body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        s["name"] + ("" if s.get("index") is None else f"[{s['index']}]"): s
        for s in run_body["status"]["steps"]
    }


# --- Kueue: one ResourceFlavor, ClusterQueues with a quota of steps, LocalQueues ---------------

KUEUE_API = "kueue.x-k8s.io/v1beta2"
FLAVOR = "default-flavor"


def resource_flavor(name: str = FLAVOR) -> dict[str, Any]:
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": name}}


def cluster_queue(
    name: str,
    quotas: dict[str, str],
    cohort: str | None = None,
    borrowing: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A ClusterQueue of every namespace with one flavor, these nominal quotas and, in a
    cohort, these borrowing limits."""
    body: dict[str, Any] = {
        "namespaceSelector": {},
        "resourceGroups": [
            {
                "coveredResources": list(quotas),
                "flavors": [
                    {
                        "name": FLAVOR,
                        "resources": [
                            {"name": resource, "nominalQuota": quota}
                            | (
                                {"borrowingLimit": borrowing[resource]}
                                if resource in (borrowing or {})
                                else {}
                            )
                            for resource, quota in quotas.items()
                        ],
                    }
                ],
            }
        ],
        **spec,
    }
    if cohort:
        body["cohortName"] = cohort
    return {
        "apiVersion": KUEUE_API,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": body,
    }


def local_queue(name: str, cluster_queue_name: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE_API,
        "kind": "LocalQueue",
        "metadata": {"name": name},
        "spec": {"clusterQueue": cluster_queue_name},
    }
