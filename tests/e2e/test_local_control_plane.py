"""The local control plane is a real one: Jobs run through the Job controller, the scheduler and
kwok; garbage collection works; Pod annotations drive outcomes; Postgres servers are real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from kubernetes import client

from nofx_dev.audit import AuditLog, Write
from nofx_dev.controlplane import ControlPlane
from nofx_dev.kwok import played_job
from nofx_dev.processes import pid_alive

from ..conftest import Kubectl, new_postgres


def job_manifest(name: str, annotations: dict[str, str] | None = None) -> str:
    return json.dumps(played_job(name, annotations))


def wait_for(kubectl: Kubectl, namespace: str, what: str, condition: str) -> None:
    kubectl("wait", "-n", namespace, what, f"--for={condition}", "--timeout=60s")


def job_pods(kubectl: Kubectl, namespace: str, job: str) -> list[dict]:
    return kubectl.json("get", "pods", "-n", namespace, "-l", f"job-name={job}")["items"]


@pytest.mark.oldest
def test_readyz_and_api_resources(kubectl: Kubectl) -> None:
    assert kubectl("get", "--raw", "/readyz") == "ok"
    resources = kubectl("api-resources", "--api-group=batch", "-o", "name").split()
    assert "jobs.batch" in resources


@pytest.mark.oldest
def test_server_and_kubectl_report_the_same_real_version(kubectl: Kubectl) -> None:
    # tools/build.sh's ldflags: without them both say v0.0.0-master and kubectl cannot parse it.
    versions = kubectl.json("version")
    server, client = versions["serverVersion"], versions["clientVersion"]
    assert re.fullmatch(r"v1\.\d+\.\d+", server["gitVersion"]), server
    assert (server["major"], server["minor"]) == tuple(server["gitVersion"][1:].split(".")[:2])
    assert (client["gitVersion"], client["minor"]) == (server["gitVersion"], server["minor"])


@pytest.mark.oldest
def test_job_completes_and_its_pod_is_garbage_collected(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=job_manifest("hello"))
    wait_for(kubectl, namespace, "job/hello", "condition=Complete")
    [pod] = job_pods(kubectl, namespace, "hello")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"].startswith("kwok-node-")

    kubectl("delete", "-n", namespace, "job/hello", "--cascade=background")
    deadline = time.monotonic() + 60
    while job_pods(kubectl, namespace, "hello") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_pods(kubectl, namespace, "hello") == [], "the garbage collector left the Pod"


def test_pod_annotated_to_fail_fails_the_job(kubectl: Kubectl, namespace: str) -> None:
    manifest = job_manifest("broken", {"kwok.nofx.dev/exit-code": "3"})
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    wait_for(kubectl, namespace, "job/broken", "condition=Failed")
    [pod] = job_pods(kubectl, namespace, "broken")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3


def test_pod_annotated_with_output_ends_with_that_termination_message(
    kubectl: Kubectl, namespace: str
) -> None:
    output = '{"summary": "done", "files": 3}'
    manifest = job_manifest("talker", {"kwok.nofx.dev/message": output})
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    wait_for(kubectl, namespace, "job/talker", "condition=Complete")
    [pod] = job_pods(kubectl, namespace, "talker")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["message"] == output
    assert terminated["exitCode"] == 0


def test_fail_attempts_fail_only_the_listed_attempts(
    api_client: client.ApiClient, kubectl: Kubectl, namespace: str
) -> None:
    for attempt in ("1", "2"):
        job = json.loads(job_manifest(f"flaky-{attempt}", {"kwok.nofx.dev/fail-attempts": "1"}))
        job["spec"]["template"]["metadata"]["labels"] = {"nofx.dev/attempt": attempt}
        client.BatchV1Api(api_client).create_namespaced_job(namespace, job)
    wait_for(kubectl, namespace, "job/flaky-1", "condition=Failed")
    wait_for(kubectl, namespace, "job/flaky-2", "condition=Complete")


def test_two_postgres_servers_at_once_with_logical_wal() -> None:
    servers = [new_postgres(), new_postgres()]
    try:
        for server in servers:
            server.start()
        ports = set()
        for server in servers:
            with psycopg.connect(server.dsn) as conn:
                assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
                ports.add(conn.execute("SHOW port").fetchone())
        assert len(ports) == 2
        servers[0].stop()
        servers[0].start()  # restarts on the same port with the same data
        with psycopg.connect(servers[0].dsn) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        for server in servers:
            server.stop()
    for server in servers:
        assert server.process is None


def test_dev_up_then_down_leaves_no_process() -> None:
    # Under /tmp: the Postgres server user must reach its directory.
    state_dir = Path(tempfile.mkdtemp(prefix="nofx-dev-test-"))
    command = [sys.executable, "-m", "nofx_dev"]
    up = subprocess.run(
        [*command, "up", "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "export KUBECONFIG=" in up.stdout and "export NOFX_DATABASE_URL=" in up.stdout
    kubeconfig = state_dir / "kubeconfig"
    readyz = Kubectl(kubeconfig)("get", "--raw", "/readyz")
    assert readyz == "ok"
    children = _processes_mentioning(str(state_dir))
    assert len(children) >= 6, (
        "expected etcd, apiserver, controller-manager, scheduler, kwok, postgres"
    )

    subprocess.run([*command, "down", "--state-dir", str(state_dir)], check=True, timeout=120)
    assert [pid for pid in children if pid_alive(pid)] == []


def test_stop_leaves_no_process(tmp_path_factory: pytest.TempPathFactory) -> None:
    plane = ControlPlane(tmp_path_factory.mktemp("second"), nodes=1)
    plane.start()
    pids = [proc.popen.pid for proc in plane.processes if proc.popen]
    plane.stop()
    assert len(pids) == 5
    assert [pid for pid in pids if pid_alive(pid)] == []


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if text.encode() in cmdline.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def test_audit_log_records_a_write_by_a_named_user(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    plane = ControlPlane(tmp_path_factory.mktemp("audited"), nodes=1, audit_log=True)
    plane.start()
    try:
        log = AuditLog(plane.audit_log_path)
        mark = log.mark()
        someone = Kubectl(plane.kubeconfig_for("someone", groups=["system:masters"]))
        someone("create", "configmap", "written", "-n", "default")
        someone("get", "configmap", "written", "-n", "default")
        writes = [w for w in log.read_since(mark) if w.user == "someone"]
        assert writes == [Write("someone", "create", "configmaps", "default", 201)]
    finally:
        plane.stop()
