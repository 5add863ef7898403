"""Exactly once under crashes: the operator is SIGKILLed again and again, and Postgres goes away
for a while, as 150 Runs whose steps read the outputs of the step before run through a flaky step
with retries. A watch of our own records every Job the API server ever created and every status
each Run ever had; Postgres must hold every audit event once, in order, chained.

`make chaos` runs it larger (NOFX_CHAOS_RUNS, NOFX_CHAOS_KILLS)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer

from ..conftest import Kubectl, new_postgres
from .conftest import OperatorProcess
from .objects import agent, apply, run, step, template

RUNS = int(os.environ.get("NOFX_CHAOS_RUNS", "150"))
KILLS = int(os.environ.get("NOFX_CHAOS_KILLS", "25"))
OUTAGE_SECONDS = 15
# Within one attempt: not started, running, failed and waiting to retry, finished.
RANK = {"Pending": 0, "Waiting": 0, "Running": 1, "Retrying": 2}


class Recorder:
    """Watches Jobs and Runs from the start and keeps everything it saw."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.namespace = namespace
        self.job_uids: dict[str, set[str]] = defaultdict(set)
        self.step_history: dict[tuple[str, str, int | None], list[tuple[int, int]]] = defaultdict(
            list
        )
        self.watches: list[watch.Watch] = []
        self.stopped = False
        self.broken: str | None = None  # why a watch could not go on, if it could not
        batch = client.BatchV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        self.threads = [
            threading.Thread(
                target=self._follow, args=(self._job, batch.list_namespaced_job, namespace),
                daemon=True,
            ),
            threading.Thread(
                target=self._follow,
                args=(
                    self._run, custom.list_namespaced_custom_object,
                    "nofx.dev", "v1alpha1", namespace, "runs",
                ),
                daemon=True,
            ),
        ]  # fmt: skip

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopped = True
        for w in self.watches:
            w.stop()

    def _follow(self, seen, list_fn, *args) -> None:  # type: ignore[no-untyped-def]
        """Every event, from the start: a watch that breaks (the loaded API server closing
        it) goes on from the last resourceVersion it delivered, so nothing is missed."""
        w = watch.Watch()
        self.watches.append(w)
        version = None
        while not self.stopped:
            try:
                for event in w.stream(list_fn, *args, resource_version=version,
                                      timeout_seconds=600):  # fmt: skip
                    seen(event["object"])
                version = w.resource_version
            except ApiException as error:
                if not self.stopped:
                    self.broken = f"watch of {args[-1] if args else 'jobs'}: {error}"
                return
            except (ProtocolError, OSError):
                version = w.resource_version
                time.sleep(0.5)

    def _job(self, job) -> None:  # type: ignore[no-untyped-def]
        self.job_uids[job.metadata.name].add(job.metadata.uid)

    def _run(self, body: dict) -> None:
        for entry in (body.get("status") or {}).get("steps") or []:
            key = (body["metadata"]["name"], entry["name"], entry.get("index"))
            self.step_history[key].append(_progress(entry))


def _progress(entry: dict) -> tuple[int, int]:
    phase = entry["phase"]
    if phase == "Waiting" and entry.get("nextAttemptAt"):
        phase = "Retrying"
    return entry.get("attempts") or 0, RANK.get(phase, 3)


def test_sigkilled_operator_and_postgres_outage_lose_nothing_and_run_nothing_twice(
    start_plane: Callable[..., ControlPlane], tmp_path_factory: pytest.TempPathFactory
) -> None:
    isolated_plane = start_plane("crash-plane")
    kubectl = Kubectl(isolated_plane.kubeconfig)
    namespace = "crash"
    kubectl("create", "namespace", namespace)
    postgres = new_postgres()
    postgres.start()
    recorder = Recorder(isolated_plane.kubeconfig, namespace)
    operator = OperatorProcess(
        isolated_plane, tmp_path_factory.mktemp("crash-operator"), "--standalone",
        "--database-url", postgres.dsn, "--region", "crash",
    )  # fmt: skip
    try:
        nofx(postgres.dsn, "db", "migrate")
        recorder.start()
        operator.start()
        chaos(kubectl, namespace, operator, postgres)
        phases = wait_finished(kubectl, namespace, timeout=300 + 2 * RUNS)
        operator.stop()
        time.sleep(1)  # let the watches deliver the last events
        recorder.stop()

        assert recorder.broken is None, recorder.broken
        assert phases == {f"crash-{i}": "Succeeded" for i in range(RUNS)}
        for body in kubectl.json("get", "runs", "-n", namespace)["items"]:
            n = body["metadata"]["name"].removeprefix("crash-")
            test = next(s for s in body["status"]["steps"] if s["name"] == "test")
            assert test["outputs"] == {"checked": n}, "outputs passed down through the crashes"
        duplicated = {name: uids for name, uids in recorder.job_uids.items() if len(uids) > 1}
        assert duplicated == {}, "a step attempt got a second Job"
        # Every Run: plan and test once; code failed once and succeeded on attempt 2.
        assert len(recorder.job_uids) == RUNS * 4
        for key, history in recorder.step_history.items():
            assert history == sorted(history), f"step status of {key} went backwards: {history}"
        assert_audit_complete(kubectl, namespace, postgres)
    finally:
        operator.stop()
        recorder.stop()
        postgres.stop()
        shutil.rmtree(postgres.directory.parent, ignore_errors=True)


def chaos(
    kubectl: Kubectl, namespace: str, operator: OperatorProcess, postgres: PostgresServer
) -> None:
    """Applies the Runs while the operator is killed at random moments; Postgres is down for
    a while in the middle of it."""
    retry = {"limit": 2, "backoff": {"duration": "1s", "factor": 1}}
    apply(
        kubectl,
        namespace,
        agent("echo", {"kwok.nofx.dev/duration": "500ms"}),
        agent("flaky", {"kwok.nofx.dev/duration": "500ms", "kwok.nofx.dev/fail-attempts": "1"}),
        template(
            "chain",
            [
                step("plan", inputs={"n": "{{ params.n }}"}),
                step("code", "flaky", dependsOn=["plan"], retries=retry,
                     inputs={"result": "{{ steps.plan.outputs.n }}"}),
                step("test", dependsOn=["code"],
                     inputs={"checked": "{{ steps.code.outputs.result }}"}),
            ],
            parameters=[{"name": "n"}],
        ),
    )  # fmt: skip
    rng = random.Random(20261202)
    kill_at = sorted(rng.uniform(0, RUNS / 4) for _ in range(KILLS))  # seconds from now
    outage_at = RUNS / 8
    started, applied, killed, outage, outage_ends = time.monotonic(), 0, 0, False, 0.0
    while applied < RUNS or killed < KILLS:
        elapsed = time.monotonic() - started
        if applied < RUNS:
            batch = [
                run(f"crash-{i}", templateRef={"name": "chain"}, parameters={"n": str(i)})
                for i in range(applied, min(RUNS, applied + 5))
            ]
            apply(kubectl, namespace, *batch)
            applied += len(batch)
        if not outage and elapsed >= outage_at:
            postgres.stop()
            outage = True
            outage_ends = time.monotonic() + OUTAGE_SECONDS
        if outage_ends and time.monotonic() >= outage_ends:
            postgres.start()
            outage_ends = 0.0
        if killed < KILLS and elapsed >= kill_at[killed]:
            operator.kill()
            time.sleep(rng.uniform(0.0, 0.5))
            operator.start()
            killed += 1
        time.sleep(0.2 if applied < RUNS else 0.05)
    if outage_ends:
        time.sleep(max(0.0, outage_ends - time.monotonic()))
        postgres.start()


def wait_finished(kubectl: Kubectl, namespace: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        runs = kubectl.json("get", "runs", "-n", namespace)["items"]
        phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase", "") for r in runs}
        if len(phases) == RUNS and all(
            p in ("Succeeded", "Failed", "Cancelled") for p in phases.values()
        ):
            return phases
        time.sleep(1)
    return phases


def assert_audit_complete(kubectl: Kubectl, namespace: str, postgres: PostgresServer) -> None:
    """Postgres holds every audit event of every Run once, in order, and every chain verifies."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = kubectl.json("get", "runs", "-n", namespace)["items"]
        if not any(((r.get("status") or {}).get("audit") or {}).get("pending") for r in runs):
            break
        time.sleep(1)
    else:
        raise AssertionError("the mirror did not catch up")
    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        for body in runs:
            rows = conn.execute(
                "SELECT seq FROM audit_events WHERE stream = %s ORDER BY seq",
                (f"run/{body['metadata']['uid']}",),
            ).fetchall()
            expected = body["status"]["audit"]["nextSeq"] - 1
            assert [r[0] for r in rows] == list(range(1, expected + 1)), body["metadata"]["name"]
    verify = nofx(postgres.dsn, "audit", "verify")
    assert "every hash chain verifies" in verify


def nofx(dsn: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "nofx.cli", *args, "--database-url", dsn, "--region", "crash"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout
