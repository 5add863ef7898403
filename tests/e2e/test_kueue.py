"""Kueue on the local control plane: built from its pinned module, started by the launcher, its
webhooks called by the API server, admitting suspended Jobs within a ClusterQueue's quota."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from nofx_dev.controlplane import ControlPlane

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, cluster_queue, local_queue, resource_flavor, run, step

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


# --- Runs whose step Jobs Kueue admits ---------------------------------------------------------

NOMINAL, BORROW = 3, 1  # concurrent steps per account, and what it may borrow from the cohort
RUNS_PER_ACCOUNT = 20


@pytest.fixture(scope="module")
def kueue_operator(
    kueue_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        kueue_plane, tmp_path_factory.mktemp("kueue-operator"), "--standalone", "--kueue"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"\noperator log: {process.log_path}")


def account_namespace(kubectl: Kubectl, name: str, queue: str | None = None) -> None:
    """A namespace of one account with the echo Agent; `queue` is its default LocalQueue."""
    labels = {"nofx.dev/account": name, "pod-security.kubernetes.io/enforce": "restricted"}
    if queue:
        labels["nofx.dev/queue-name"] = queue
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }
    kubectl("apply", "-f", "-", input=json.dumps(namespace))
    apply(kubectl, name, agent("echo", {"kwok.nofx.dev/duration": "1s"}))


class PodWatch:
    """Counts the unfinished step Pods of each namespace as the API server reports them, and
    keeps the highest counts seen (per namespace, and of all together)."""

    def __init__(self, plane: ControlPlane, namespaces: list[str]) -> None:
        self.api = client.CoreV1Api(config.new_client_from_config(str(plane.kubeconfig)))
        self.namespaces = namespaces
        self.live: dict[str, set[str]] = {n: set() for n in namespaces}
        self.most: dict[str, int] = dict.fromkeys(namespaces, 0)
        self.most_together = 0
        self.started: dict[str, list[float]] = {n: [] for n in namespaces}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        stream = watch.Watch()
        for event in stream.stream(
            self.api.list_pod_for_all_namespaces, label_selector="nofx.dev/run", timeout_seconds=300
        ):
            pod = event["object"]
            namespace, name = pod.metadata.namespace, pod.metadata.name
            if namespace in self.live:
                done = event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed")
                if done:
                    self.live[namespace].discard(name)
                elif name not in self.live[namespace]:
                    self.live[namespace].add(name)
                    self.started[namespace].append(time.monotonic())
                self.most[namespace] = max(self.most[namespace], len(self.live[namespace]))
                together = sum(len(pods) for pods in self.live.values())
                self.most_together = max(self.most_together, together)
            if self.stop.is_set():
                stream.stop()

    def __enter__(self) -> PodWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()


def test_two_accounts_share_a_cohort_within_their_quotas(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess
) -> None:
    kubectl = Kubectl(kueue_plane.kubeconfig)
    accounts = ["acct-a", "acct-b"]
    quotas = {"cpu": "100", "memory": "100Gi", "pods": str(NOMINAL)}
    queues = [
        cluster_queue(
            name,
            quotas,
            cohort="plans",
            borrowing={"pods": str(BORROW)},
            fairSharing={"weight": "1"},
        )
        for name in accounts
    ]
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [resource_flavor(), *queues]}
        ),
    )
    for name in accounts:
        account_namespace(kubectl, name, queue="steps")
        kubectl("apply", "-n", name, "-f", "-", input=json.dumps(local_queue("steps", name)))
    kubectl(
        "wait", "--for=condition=Active", "--timeout=30s", *[f"clusterqueue/{a}" for a in accounts]
    )

    with PodWatch(kueue_plane, accounts) as pods:
        time.sleep(0.5)  # the watch is listening
        for name in accounts:
            runs = [run(f"r{i}", steps=[step("work")]) for i in range(RUNS_PER_ACCOUNT)]
            apply(kubectl, name, *runs)
        queued_seen = wait_for(lambda: any_queued_for_quota(kubectl, accounts), 30, "a Run Queued")
        finished = {name: wait_all_succeeded(kubectl, name, 120) for name in accounts}

    print(f"\nmost unfinished step Pods: {pods.most}, of both together: {pods.most_together}")
    assert "insufficient unused quota for pods" in queued_seen
    for name in accounts:
        assert pods.most[name] <= NOMINAL + BORROW, pods.most
        assert pods.most[name] >= NOMINAL, pods.most  # it used its quota
        assert len(pods.started[name]) == RUNS_PER_ACCOUNT  # one Pod per step: none ran twice
    assert pods.most_together <= 2 * NOMINAL
    # Fair sharing: neither account waited for the other to finish.
    first_done = min(finished.values())
    for name in accounts:
        assert sorted(pods.started[name])[RUNS_PER_ACCOUNT // 2] < first_done
    body = kubectl.json("get", "runs", "-n", "acct-a")["items"][0]
    assert body["status"]["queueName"] == "steps"
    assert body["status"]["steps"][0]["attempts"] == 1


def any_queued_for_quota(kubectl: Kubectl, namespaces: list[str]) -> str | None:
    for namespace in namespaces:
        for body in kubectl.json("get", "runs", "-n", namespace)["items"]:
            status = body.get("status") or {}
            if status.get("phase") == "Queued":
                return str(status.get("message"))
    return None


def wait_all_succeeded(kubectl: Kubectl, namespace: str, timeout: float) -> float:
    """Waits until every Run of the namespace succeeded; returns when (time.monotonic)."""

    def done() -> bool:
        phases = [
            (b.get("status") or {}).get("phase")
            for b in kubectl.json("get", "runs", "-n", namespace)["items"]
        ]
        assert "Failed" not in phases, phases
        return phases.count("Succeeded") == len(phases)

    wait_for(done, timeout, f"every Run of {namespace} to succeed")
    return time.monotonic()


def test_a_run_naming_a_missing_queue_says_so_and_starts_once_it_exists(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess
) -> None:
    kubectl = Kubectl(kueue_plane.kubeconfig)
    namespace = "acct-late"
    account_namespace(kubectl, namespace)
    kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    resource_flavor(),
                    cluster_queue("late", {"cpu": "10", "memory": "10Gi", "pods": "5"}),
                ],
            }
        ),
    )
    apply(kubectl, namespace, run("waits", queueName="later", steps=[step("work")]))

    def inadmissible() -> dict[str, Any]:
        status = kubectl.json("get", "run", "waits", "-n", namespace).get("status") or {}
        found = condition(status and {"status": status}, "Succeeded")
        return found if found.get("reason") == "QueueInadmissible" else {}

    shown = wait_for(inadmissible, 30, "the Run to say its queue is missing")
    assert "LocalQueue later doesn't exist" in shown["message"]
    body = kubectl.json("get", "run", "waits", "-n", namespace)
    assert body["status"]["phase"] == "Queued"
    assert body["status"]["steps"][0]["phase"] == "Queued"

    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(local_queue("later", "late")))
    done = wait_for_phase(kubectl, namespace, "waits", {"Succeeded", "Failed"}, timeout=60)
    assert done["status"]["phase"] == "Succeeded"
