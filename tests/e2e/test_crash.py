"""Exactly once under crashes: the operator is SIGKILLed again and again while 20 Runs are in
flight. A watch of our own records every Job the API server ever created and every status each
Run ever had."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, config, watch

from nofx.localcluster.controlplane import ControlPlane

from ..conftest import Kubectl
from .conftest import OperatorProcess
from .objects import agent, apply, run, step, template

RUNS = 20
KILLS = 5
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
        self.threads = [
            threading.Thread(target=self._guarded(self._watch_jobs), daemon=True),
            threading.Thread(target=self._guarded(self._watch_runs), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopped = True
        for w in self.watches:
            w.stop()

    def _guarded(self, target):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                target()
            except Exception:
                if not self.stopped:  # the control plane going away at the end is expected
                    raise

        return run

    def _watch_jobs(self) -> None:
        w = watch.Watch()
        self.watches.append(w)
        batch = client.BatchV1Api(self.api)
        for event in w.stream(batch.list_namespaced_job, self.namespace, timeout_seconds=600):
            job = event["object"]
            self.job_uids[job.metadata.name].add(job.metadata.uid)

    def _watch_runs(self) -> None:
        w = watch.Watch()
        self.watches.append(w)
        custom = client.CustomObjectsApi(self.api)
        for event in w.stream(
            custom.list_namespaced_custom_object,
            "nofx.dev",
            "v1alpha1",
            self.namespace,
            "runs",
            timeout_seconds=600,
        ):
            body = event["object"]
            for entry in (body.get("status") or {}).get("steps") or []:
                key = (body["metadata"]["name"], entry["name"], entry.get("index"))
                self.step_history[key].append(_progress(entry))


def _progress(entry: dict) -> tuple[int, int]:
    phase = entry["phase"]
    if phase == "Waiting" and entry.get("nextAttemptAt"):
        phase = "Retrying"
    return entry.get("attempts") or 0, RANK.get(phase, 3)


def test_sigkilled_operator_never_runs_a_step_twice(
    start_plane: Callable[..., ControlPlane], tmp_path_factory: pytest.TempPathFactory
) -> None:
    isolated_plane = start_plane("crash-plane")
    kubectl = Kubectl(isolated_plane.kubeconfig)
    namespace = "crash"
    kubectl("create", "namespace", namespace)
    recorder = Recorder(isolated_plane.kubeconfig, namespace)
    recorder.start()
    operator = OperatorProcess(
        isolated_plane, tmp_path_factory.mktemp("crash-operator"), "--standalone"
    )
    operator.start()

    retry = {"limit": 2, "backoff": {"duration": "1s", "factor": 1}}
    apply(
        kubectl,
        namespace,
        agent("echo", {"kwok.nofx.dev/duration": "500ms"}),
        agent("flaky", {"kwok.nofx.dev/duration": "500ms", "kwok.nofx.dev/fail-attempts": "1"}),
        template(
            "diamond",
            [
                step("plan", inputs={"n": "{{ params.n }}"}),
                step("left", "flaky", dependsOn=["plan"], retries=retry),
                step("right", dependsOn=["plan"], inputs={"from": "{{ steps.plan.outputs.n }}"}),
                step("join", dependsOn=["left", "right"]),
            ],
            parameters=[{"name": "n"}],
        ),
    )
    rng = random.Random(20261124)
    for i in range(RUNS):
        apply(
            kubectl,
            namespace,
            run(f"crash-{i}", templateRef={"name": "diamond"}, parameters={"n": str(i)}),
        )
        if i % 4 == 3:
            time.sleep(rng.uniform(0.1, 0.6))
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.3, 2.5))
        operator.kill()
        time.sleep(rng.uniform(0.0, 1.0))
        operator.start()

    deadline = time.monotonic() + 240
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        runs = kubectl.json("get", "runs", "-n", namespace)["items"]
        phases = {r["metadata"]["name"]: (r.get("status") or {}).get("phase", "") for r in runs}
        if all(p in ("Succeeded", "Failed", "Cancelled") for p in phases.values()):
            break
        time.sleep(0.5)
    operator.stop()
    time.sleep(1)  # let the watches deliver the last events
    recorder.stop()

    assert phases == {f"crash-{i}": "Succeeded" for i in range(RUNS)}
    duplicated = {name: uids for name, uids in recorder.job_uids.items() if len(uids) > 1}
    assert duplicated == {}, "a step attempt got a second Job"
    # Every Run: plan, right, join once; left failed once and succeeded on attempt 2.
    assert len(recorder.job_uids) == RUNS * 5
    for key, history in recorder.step_history.items():
        assert history == sorted(history), f"step status of {key} went backwards: {history}"
