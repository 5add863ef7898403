"""Two replicas of the operator: exactly one works; when it dies, the other takes over. The
operator's own watches and work queues follow the same decisions as Kopf's peering."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from nofx_dev.controlplane import ControlPlane
from nofx_dev.processes import wait_until

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step

PEERING = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "nofx"}}
RECONCILES = "nofx_reconcile_duration_seconds_count"


def messages(replica: OperatorProcess) -> list[str]:
    return [json.loads(line)["message"] for line in replica.log_path.read_text().splitlines()]


def created_jobs(replica: OperatorProcess) -> int:
    return messages(replica).count("created Job")


def decisions(replica: OperatorProcess) -> tuple[list[bool], list[bool]]:
    """Whether the replica was active, each time it decided: by the operator's own reading
    of the peering object, and by Kopf's (which starts paused without saying so)."""
    ours, kopf = [], []
    for message in messages(replica):
        if message in ("this replica is active", "this replica stands by"):
            ours.append(message == "this replica is active")
        elif message.startswith(("Resuming operations", "Pausing operations", "Pausing all")):
            kopf.append(message.startswith("Resuming"))
    while ours and not ours[0]:
        ours.pop(0)
    return ours, kopf


def active_now(replica: OperatorProcess) -> bool:
    ours, kopf = decisions(replica)
    return bool(ours and ours[-1] and kopf and kopf[-1])


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
    # The first to start is active until it sees the other, whose priority may be higher.
    wait_until(lambda: [active_now(r) for r in replicas].count(True) == 1, 30, "one active")
    reconciles_before = [replica.metric(RECONCILES) for replica in replicas]
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
    assert active_now(active) and not active_now(standby)
    # The standby's own step Job watch saw the Jobs finish, and it reconciled nothing.
    assert standby.metric(RECONCILES) == reconciles_before[replicas.index(standby)]
    for replica in replicas:
        ours, kopf = decisions(replica)
        assert ours == kopf, "the operator's reading of the peering object is Kopf's"
    active.kill()
    apply(kubectl, namespace, run("second", steps=[step("a")]))
    body = wait_for_phase(kubectl, namespace, "second", {"Succeeded", "Failed"}, timeout=90)
    assert body["status"]["phase"] == "Succeeded"
    assert created_jobs(standby) == 1
    assert active_now(standby)
    assert decisions(standby)[0] == decisions(standby)[1]
    standby.stop()
