"""Kueue on the local control plane: built from its pinned module, started by the launcher, its
webhooks called by the API server, admitting suspended Jobs within a ClusterQueue's quota."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from nofx_dev.controlplane import ControlPlane

from ..conftest import Kubectl
from .objects import cluster_queue, local_queue, resource_flavor

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@pytest.fixture(scope="module")
def kueue_plane(start_plane: Callable[..., ControlPlane]) -> ControlPlane:
    return start_plane("kueue", kueue=True)


def queued_job(name: str, queue: str, seconds: int) -> dict[str, Any]:
    """A Job of one Pod that asks for one cpu and runs `seconds`, labelled for `queue`, and
    not suspended: Kueue's mutating webhook suspends it."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {QUEUE_LABEL: queue}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"kwok.nofx.dev/duration": f"{seconds}s"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/step:1",
                            "resources": {"requests": {"cpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def workload_of(kubectl: Kubectl, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
    uid = job["metadata"]["uid"]
    items = kubectl.json("get", "workloads", "-n", namespace, "-l", f"kueue.x-k8s.io/job-uid={uid}")
    return items["items"][0] if items["items"] else None


def condition(body: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for entry in ((body or {}).get("status") or {}).get("conditions") or []:
        if entry["type"] == kind:
            return dict(entry)
    return {}


def test_kueue_admits_suspended_jobs_within_quota(kueue_plane: ControlPlane) -> None:
    kubectl = Kubectl(kueue_plane.kubeconfig)
    namespace = "kueue-smoke"
    kubectl("create", "namespace", namespace)
    objects = [resource_flavor(), cluster_queue("one-cpu", {"cpu": "1"})]
    kubectl(
        "apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects})
    )
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(local_queue("steps", "one-cpu")))
    kubectl("wait", "--for=condition=Active", "--timeout=30s", "clusterqueue/one-cpu")

    created = {}
    for name, seconds in (("first", 3), ("second", 0)):
        out = kubectl(
            "create",
            "-n",
            namespace,
            "-o",
            "json",
            "-f",
            "-",
            input=json.dumps(queued_job(name, "steps", seconds)),
        )
        created[name] = json.loads(out)
        # The create's response already carries the mutation: the API server called Kueue.
        assert created[name]["spec"]["suspend"] is True

    def job(name: str) -> dict[str, Any]:
        return kubectl.json("get", "job", name, "-n", namespace)

    wait_for(lambda: job("first")["spec"]["suspend"] is False, 30, "the first Job admitted")
    waiting = wait_for(
        lambda: condition(workload_of(kubectl, namespace, created["second"]), "QuotaReserved"),
        30,
        "the second Job's Workload to say why it waits",
    )
    assert waiting["status"] == "False"
    assert "insufficient unused quota for cpu" in waiting["message"]
    assert job("second")["spec"]["suspend"] is True

    wait_for(lambda: job("first")["status"].get("succeeded") == 1, 30, "the first Job done")
    wait_for(lambda: job("second")["status"].get("succeeded") == 1, 30, "the second Job done")
    admitted = workload_of(kubectl, namespace, created["second"])
    assert condition(admitted, "Admitted")["status"] == "True"
    assert admitted["status"]["admission"]["clusterQueue"] == "one-cpu"
