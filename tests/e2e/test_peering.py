"""Two replicas of the operator: exactly one works; when it dies, the other takes over."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from nofx_dev.controlplane import ControlPlane

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step

PEERING = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "nofx"}}


def logged(replica: OperatorProcess, message: str) -> int:
    lines = replica.log_path.read_text().splitlines()
    return sum(1 for line in lines if f'"message": "{message}"' in line)


def created_jobs(replica: OperatorProcess) -> int:
    return logged(replica, "created Job")


def test_two_replicas_one_active_then_failover(
    start_plane: Callable[..., ControlPlane], tmp_path_factory: pytest.TempPathFactory
) -> None:
    plane = start_plane("peering-plane", nodes=1)
    kubectl = Kubectl(plane.kubeconfig)
    kubectl("create", "-f", "-", input=json.dumps(PEERING))
    replicas = [
        OperatorProcess(plane, tmp_path_factory.mktemp(f"replica-{i}"), "--peering-lifetime", "5")
        for i in range(2)
    ]
    for replica in replicas:
        replica.start()
    namespace = "default"
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run("first", steps=[step("a"), step("b", dependsOn=["a"])]),
    )
    assert (
        wait_for_phase(kubectl, namespace, "first", {"Succeeded", "Failed"})["status"]["phase"]
        == "Succeeded"
    )
    counts = [created_jobs(replica) for replica in replicas]
    assert sorted(counts) == [0, 2], f"Jobs created per replica: {counts}"

    active = replicas[counts.index(2)]
    standby = replicas[counts.index(0)]
    # The operator's own watches and timers stood by too: the standby's step Job watch saw
    # the Jobs finish, and it created none.
    assert logged(active, "this replica is active") >= 1
    assert logged(standby, "this replica is active") == 0
    assert logged(standby, "this replica stands by") >= 1
    active.kill()
    apply(kubectl, namespace, run("second", steps=[step("a")]))
    body = wait_for_phase(kubectl, namespace, "second", {"Succeeded", "Failed"}, timeout=90)
    assert body["status"]["phase"] == "Succeeded"
    assert created_jobs(standby) == 1
    assert logged(standby, "this replica is active") == 1
    standby.stop()
