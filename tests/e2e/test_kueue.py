"""Kueue on the local control plane: built from its pinned module, started by the launcher, its
webhooks called by the API server, admitting suspended Jobs within a ClusterQueue's quota."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from kubernetes import client, config, watch
from urllib3.exceptions import ProtocolError

from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.tools import tool_path

from ..conftest import Kubectl, new_postgres
from .conftest import REPO, OperatorProcess, wait_for_phase
from .objects import (
    agent,
    apply,
    cluster_queue,
    local_queue,
    resource_flavor,
    run,
    step,
    template,
)
from .test_true_answers import wait_until

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


def apply_cluster(kubectl: Kubectl, *objects: dict[str, Any]) -> None:
    """Applies cluster-scoped objects (or objects that name their namespace)."""
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    kubectl("apply", "-f", "-", input=document)


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
    apply_cluster(kubectl, resource_flavor(), cluster_queue("one-cpu", {"cpu": "1"}))
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(local_queue("steps", "one-cpu")))
    kubectl("wait", "--for=condition=Active", "--timeout=30s", "clusterqueue/one-cpu")

    created = {}
    for name in ("one", "two"):  # each runs until it is deleted
        out = kubectl(
            "create", "-n", namespace, "-o", "json", "-f", "-",
            input=json.dumps(queued_job(name, "steps", 600)),
        )  # fmt: skip
        created[name] = json.loads(out)
        # The create's response already carries the mutation: the API server called Kueue.
        assert created[name]["spec"]["suspend"] is True

    def job(name: str) -> dict[str, Any]:
        return kubectl.json("get", "job", name, "-n", namespace)

    def admitted_one() -> list[str]:
        # Created in the same second, they are admitted in either order.
        return [name for name in created if job(name)["spec"]["suspend"] is False]

    [holder] = wait_until(admitted_one, 30, "one Job admitted")
    [waiter] = [name for name in created if name != holder]
    waiting = wait_until(
        lambda: condition(workload_of(kubectl, namespace, created[waiter]), "QuotaReserved"),
        30,
        "the other Job's Workload to say why it waits",
    )
    assert waiting["status"] == "False"
    assert "insufficient unused quota for cpu" in waiting["message"]
    assert job(waiter)["spec"]["suspend"] is True
    assert admitted_one() == [holder]

    kubectl("delete", "job", holder, "-n", namespace, "--wait=false")  # its cpu is free again
    wait_until(lambda: job(waiter)["spec"]["suspend"] is False, 30, "the other Job admitted")
    admitted = workload_of(kubectl, namespace, created[waiter])
    assert condition(admitted, "Admitted")["status"] == "True"
    assert admitted["status"]["admission"]["clusterQueue"] == "one-cpu"
    wait_until(lambda: job(waiter)["status"].get("active") == 1, 30, "its Pod")


# --- Runs whose step Jobs Kueue admits ---------------------------------------------------------

REGION = "kueue-test"
OPERATOR_USER = "nofx-operator"
NOMINAL, BORROW = 3, 1  # concurrent steps per account, and what it may borrow from the cohort
RUNS_PER_ACCOUNT = 20


@pytest.fixture(scope="module")
def mirror_db() -> Iterator[PostgresServer]:
    server = new_postgres()
    server.start()
    try:
        nofx_cli("db", "migrate", "--database-url", server.dsn)
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.directory.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def kueue_operator(
    kueue_plane: ControlPlane, mirror_db: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with --kueue, as a user with exactly the chart's RBAC (kueue.enabled)."""
    process = OperatorProcess(
        kueue_plane, tmp_path_factory.mktemp("kueue-operator"), "--standalone", "--kueue",
        "--database-url", mirror_db.dsn, "--region", REGION,
        kubeconfig=operator_with_chart_rbac(kueue_plane),
    )  # fmt: skip
    process.start()
    try:
        yield process
        assert (
            "ForbiddenException" not in process.log_path.read_text()
        )  # the chart's RBAC is enough
    finally:
        process.stop()
        print(f"\noperator log: {process.log_path}")


def operator_with_chart_rbac(plane: ControlPlane) -> Path:
    rendered = subprocess.run(
        [str(tool_path("helm")), "template", "nofx", str(REPO / "charts" / "nofx"),
         "--kube-version", "1.37.2", "--set", "region=test", "--set", "kueue.enabled=true",
         "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    [role] = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "ClusterRole"]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATOR_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": role["metadata"]["name"]},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                      "name": OPERATOR_USER}],
    }  # fmt: skip
    apply_cluster(Kubectl(plane.kubeconfig), role, binding)
    return plane.kubeconfig_for(OPERATOR_USER)


def nofx_cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "nofx.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def sql(server: PostgresServer, query: str, *params: object) -> list[tuple[Any, ...]]:
    """Waits for nothing: callers wait until the mirror has what they look for."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def account_namespace(
    kubectl: Kubectl, name: str, queue: str | None = None, seconds: int = 1
) -> None:
    """A namespace of one account with the echo Agent, whose steps take `seconds`; `queue` is
    its default LocalQueue."""
    labels = {"nofx.dev/account": name, "pod-security.kubernetes.io/enforce": "restricted"}
    if queue:
        labels["nofx.dev/queue-name"] = queue
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }
    kubectl("apply", "-f", "-", input=json.dumps(namespace))
    apply(kubectl, name, agent("echo", {"kwok.nofx.dev/duration": f"{seconds}s"}))


class PodWatch:
    """Counts the unfinished step Pods of each namespace as the API server reports them, and
    keeps the highest counts seen (per namespace, and of all together)."""

    def __init__(self, plane: ControlPlane, namespaces: list[str]) -> None:
        self.api = client.CoreV1Api(config.new_client_from_config(str(plane.kubeconfig)))
        self.namespaces = namespaces
        self.live: dict[str, set[str]] = {n: set() for n in namespaces}
        self.most: dict[str, int] = dict.fromkeys(namespaces, 0)
        self.most_together = 0
        self.started: dict[str, dict[str, float]] = {n: {} for n in namespaces}  # Pod → when
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        # A watch the API server ends is started again: its first events list every Pod anew,
        # which changes nothing here (Pods are known by name).
        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.api.list_pod_for_all_namespaces, label_selector="nofx.dev/run"
                ):
                    self._seen(event["type"], event["object"])
                    if self.stop.is_set():
                        stream.stop()
            except ProtocolError:
                continue

    def _seen(self, kind: str, pod: Any) -> None:
        namespace, name = pod.metadata.namespace, pod.metadata.name
        if namespace not in self.live:
            return
        self.started[namespace].setdefault(name, time.monotonic())
        if kind == "DELETED" or pod.status.phase in ("Succeeded", "Failed"):
            self.live[namespace].discard(name)
            return
        self.live[namespace].add(name)
        self.most[namespace] = max(self.most[namespace], len(self.live[namespace]))
        together = sum(len(pods) for pods in self.live.values())
        self.most_together = max(self.most_together, together)

    def __enter__(self) -> PodWatch:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()


def test_two_accounts_share_a_cohort_within_their_quotas(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess, mirror_db: PostgresServer
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
    apply_cluster(kubectl, resource_flavor(), *queues)
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
        queued_seen = wait_until(
            lambda: any_queued_for_quota(kubectl, accounts), 30, "a Run Queued"
        )
        finished = {name: wait_all_succeeded(kubectl, name, 120) for name in accounts}

    print(f"\nmost unfinished step Pods: {pods.most}, of both together: {pods.most_together}")
    assert "queued in LocalQueue steps as Job" in queued_seen
    for name in accounts:
        assert pods.most[name] <= NOMINAL + BORROW, pods.most
        assert pods.most[name] >= NOMINAL, pods.most  # it used its quota
        assert len(pods.started[name]) == RUNS_PER_ACCOUNT  # one Pod per step: none ran twice
    assert pods.most_together <= 2 * NOMINAL
    # Fair sharing: neither account waited for the other to finish.
    first_done = min(finished.values())
    for name in accounts:
        assert sorted(pods.started[name].values())[RUNS_PER_ACCOUNT // 2] < first_done
    waits = re.search(r"^nofx_step_queue_seconds_count (\S+)$", kueue_operator.metrics(), re.M)
    assert waits is not None and float(waits.group(1)) >= 2 * RUNS_PER_ACCOUNT
    bodies = kubectl.json("get", "runs", "-n", "acct-a")["items"]
    assert {b["status"]["queueName"] for b in bodies} == {"steps"}
    assert {b["status"]["steps"][0]["attempts"] for b in bodies} == {1}

    # Billing charges run time only: each 1 s step is billed about 1 s, however long it queued;
    # the queue and the wait for admission are recorded beside it.
    def usage() -> list[tuple[float, str, float]]:
        rows = sql(
            mirror_db,
            "SELECT wall_seconds, queue, queued_seconds FROM usage_records"
            " WHERE namespace = ANY(%s)",
            accounts,
        )
        return rows if len(rows) == 2 * RUNS_PER_ACCOUNT else []

    records = wait_until(usage, 30, "the mirror's usage records of every step")
    billed = [float(wall) for wall, _, _ in records]
    longest = max(
        seconds_between(b["metadata"]["creationTimestamp"], b["status"]["finishedAt"])
        for b in bodies
    )
    assert max(billed) < 2.5 < longest, (billed, longest)
    assert {queue for _, queue, _ in records} == {"steps"}
    assert max(float(queued) for _, _, queued in records) > 2.5, "some steps waited for quota"


def seconds_between(start: str, end: str) -> float:
    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


# Kueue's words for a Workload waiting for quota: the usual one, and the one its scheduler gives
# when another Workload took the quota in the same scheduling cycle.
WAITING_FOR_QUOTA = ("insufficient unused quota for pods", "no longer fits after processing")


def any_queued_for_quota(kubectl: Kubectl, namespaces: list[str]) -> str | None:
    """The message of a Run Queued for want of quota, with Kueue's reason, if any Run shows one."""
    for namespace in namespaces:
        for body in kubectl.json("get", "runs", "-n", namespace)["items"]:
            status = body.get("status") or {}
            message = str(status.get("message"))
            if status.get("phase") == "Queued" and any(w in message for w in WAITING_FOR_QUOTA):
                return message
    return None


def all_succeeded(kubectl: Kubectl, namespace: str) -> bool:
    phases = [
        (b.get("status") or {}).get("phase")
        for b in kubectl.json("get", "runs", "-n", namespace)["items"]
    ]
    assert "Failed" not in phases, phases
    return phases.count("Succeeded") == len(phases)


def wait_all_succeeded(kubectl: Kubectl, namespace: str, timeout: float) -> float:
    """Waits until every Run of the namespace succeeded; returns when (time.monotonic)."""
    wait_until(lambda: all_succeeded(kubectl, namespace), timeout, f"every Run of {namespace}")
    return time.monotonic()


def test_a_run_naming_a_missing_queue_says_so_and_starts_once_it_exists(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess
) -> None:
    kubectl = Kubectl(kueue_plane.kubeconfig)
    namespace = "acct-late"
    account_namespace(kubectl, namespace)
    apply_cluster(
        kubectl,
        resource_flavor(),
        cluster_queue("late", {"cpu": "10", "memory": "10Gi", "pods": "5"}),
    )
    # The step may run 4 s; it queues longer than that, which must not count (the Job's
    # activeDeadlineSeconds restarts when Kubernetes resumes it).
    apply(kubectl, namespace, run("waits", queueName="later", steps=[step("work", timeout="4s")]))
    applied = time.monotonic()

    def inadmissible() -> dict[str, Any]:
        status = kubectl.json("get", "run", "waits", "-n", namespace).get("status") or {}
        found = condition(status and {"status": status}, "Succeeded")
        return found if found.get("reason") == "QueueInadmissible" else {}

    shown = wait_until(inadmissible, 30, "the Run to say its queue is missing")
    assert "LocalQueue later doesn't exist" in shown["message"]
    body = kubectl.json("get", "run", "waits", "-n", namespace)
    assert body["status"]["phase"] == "Queued"
    assert body["status"]["steps"][0]["phase"] == "Queued"

    time.sleep(max(0.0, applied + 6 - time.monotonic()))
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(local_queue("later", "late")))
    done = wait_for_phase(kubectl, namespace, "waits", {"Succeeded", "Failed"}, timeout=60)
    assert done["status"]["phase"] == "Succeeded"


def test_a_child_run_is_queued_where_its_parent_is(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess
) -> None:
    """The namespace names no queue and the child's Template none: the child Run names its
    parent's, and its step Job is admitted from there."""
    kubectl = Kubectl(kueue_plane.kubeconfig)
    namespace = "acct-tree"
    account_namespace(kubectl, namespace)
    apply_cluster(kubectl, resource_flavor(), cluster_queue("tree", {"pods": "5"}))
    delegate = {"name": "delegate", "childRun": {"templateRef": {"name": "leaf"}}}
    apply(
        kubectl,
        namespace,
        local_queue("parents", "tree"),
        template("leaf", [step("work")]),
        run("parent", queueName="parents", steps=[delegate]),
    )
    done = wait_for_phase(kubectl, namespace, "parent", {"Succeeded", "Failed"}, timeout=60)
    assert done["status"]["phase"] == "Succeeded"
    [child] = [
        r
        for r in kubectl.json("get", "runs", "-n", namespace)["items"]
        if r["metadata"]["name"] != "parent"
    ]
    assert child["spec"]["queueName"] == "parents"
    assert child["status"]["queueName"] == "parents"
    [job] = kubectl.json("get", "jobs", "-n", namespace)["items"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "parents"


def test_reclaimed_quota_evicts_borrowed_steps_which_queue_and_run_again(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess, mirror_db: PostgresServer
) -> None:
    """The borrower runs 4 steps on a quota of 2 (2 borrowed from the idle lender); the lender's
    own work reclaims its quota: Kueue evicts 2 of the borrower's Jobs. Their steps go back to
    Queued (reason Evicted), their Pods start again when readmitted (same Job, same attempt),
    and every Run succeeds. The audit trail records the eviction and the readmission."""
    kubectl = Kubectl(kueue_plane.kubeconfig)
    pods_quota = {"cpu": "100", "memory": "100Gi", "pods": "2"}
    queues = [
        cluster_queue("borrower", pods_quota, cohort="reclaim", borrowing={"pods": "2"}),
        cluster_queue(
            "lender", pods_quota, cohort="reclaim", preemption={"reclaimWithinCohort": "Any"}
        ),
    ]
    apply_cluster(kubectl, resource_flavor(), *queues)
    account_namespace(kubectl, "acct-borrower", queue="steps", seconds=8)
    account_namespace(kubectl, "acct-lender", queue="steps", seconds=1)
    for name in ("borrower", "lender"):
        namespace = f"acct-{name}"
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(local_queue("steps", name)))
    kubectl(
        "wait",
        "--for=condition=Active",
        "--timeout=30s",
        "clusterqueue/borrower",
        "clusterqueue/lender",
    )

    with PodWatch(kueue_plane, ["acct-borrower", "acct-lender"]) as pods:
        time.sleep(0.5)
        apply(kubectl, "acct-borrower", *[run(f"b{i}", steps=[step("work")]) for i in range(4)])
        wait_until(lambda: len(pods.live["acct-borrower"]) == 4, 30, "4 borrower steps running")
        apply(kubectl, "acct-lender", *[run(f"l{i}", steps=[step("work")]) for i in range(2)])
        shown: dict[str, str] = {}  # the evicted steps' messages, as status showed them

        def borrower_done() -> bool:
            shown.update(evicted_steps(kubectl, "acct-borrower"))
            return all_succeeded(kubectl, "acct-borrower")

        wait_all_succeeded(kubectl, "acct-lender", 60)
        wait_until(borrower_done, 90, "every borrower Run to succeed")

    assert shown and all("evicted by Kueue" in message for message in shown.values()), shown
    assert pods.most["acct-borrower"] == 4
    for body in kubectl.json("get", "runs", "-n", "acct-borrower")["items"]:
        assert body["status"]["steps"][0]["attempts"] == 1  # an eviction is not a new attempt

    def audited() -> list[tuple[Any, ...]]:
        return sql(
            mirror_db,
            "SELECT name, from_phase, to_phase FROM audit_events"
            " WHERE namespace = 'acct-borrower' AND step = 'work' ORDER BY name, seq",
        )

    def evictions() -> set[str]:
        """Runs whose step the trail shows evicted (Running → Queued) and then readmitted."""
        rows, found = audited(), set()
        for index, (name, old, new) in enumerate(rows):
            later = rows[index + 1 :]
            if (old, new) == ("Running", "Queued") and any(
                r[0] == name and r[1] == "Queued" and r[2] in ("Running", "Succeeded")
                for r in later
            ):
                found.add(name)
        return found

    audited_evictions = wait_until(
        lambda: evictions() >= set(shown) and evictions(), 30, "the audit trail"
    )
    # Each evicted step's Pod started again; nothing else ran twice.
    assert len(pods.started["acct-borrower"]) == 4 + len(audited_evictions), audited()


def evicted_steps(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    found = {}
    for body in kubectl.json("get", "runs", "-n", namespace)["items"]:
        for entry in (body.get("status") or {}).get("steps") or []:
            if entry.get("reason") == "Evicted":
                found[body["metadata"]["name"]] = entry.get("message", "")
    return found


def test_the_kueue_samples_admit_runs_through_their_namespaces_default_queue(
    kueue_plane: ControlPlane, kueue_operator: OperatorProcess
) -> None:
    kubectl = Kubectl(kueue_plane.kubeconfig)
    kubectl("apply", "-k", str(REPO / "manifests" / "samples" / "kueue"))
    kubectl(
        "wait",
        "--for=condition=Active",
        "--timeout=30s",
        "clusterqueue/acme",
        "clusterqueue/globex",
    )
    for namespace in ("acme-prod", "globex"):
        apply(kubectl, namespace, agent("echo"), run("hello", steps=[step("work")]))
    for namespace in ("acme-prod", "globex"):
        done = wait_for_phase(kubectl, namespace, "hello", {"Succeeded", "Failed"}, timeout=60)
        assert done["status"]["phase"] == "Succeeded"
        assert done["status"]["queueName"] == "steps"  # the namespace's nofx.dev/queue-name
        [job] = kubectl.json("get", "jobs", "-n", namespace)["items"]
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "steps"
        workload = workload_of(kubectl, namespace, job)
        assert workload is not None
        assert workload["status"]["admission"]["clusterQueue"] == namespace.removesuffix("-prod")
