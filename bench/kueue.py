"""`make bench-kueue`: what queueing through Kueue adds to a step's start.

On one local control plane with Kueue, the operator (--kueue) and two namespaces, Runs of one
step are applied at a steady rate: first into a namespace without a queue, then into one whose
default LocalQueue has room for every step (so nothing waits for quota: the difference is
Kueue's admission itself). For each Run: from the create call returning to its step's Pod seen
Running by a watch of our own (this process's clock). Writes bench/kueue.json and
bench/kueue.md. Figures, never pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from urllib3.exceptions import ProtocolError

from nofx_dev.controlplane import ControlPlane
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import REPO_ROOT, tool_path

HERE = Path(__file__).resolve().parent
NAMESPACES = {"plain": None, "queued": "steps"}  # namespace → its default LocalQueue


class PodsRunning:
    """When each Run's first Pod was first seen Running (monotonic seconds), by (ns, run)."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core, self.stop = core, threading.Event()
        self.seen: dict[tuple[str, str], float] = {}
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(
                    self.core.list_pod_for_all_namespaces, label_selector="nofx.dev/run"
                ):
                    pod = event["object"]
                    if pod.status.phase == "Running":
                        key = (pod.metadata.namespace, pod.metadata.labels["nofx.dev/run"])
                        self.seen.setdefault(key, time.monotonic())
                    if self.stop.is_set():
                        stream.stop()
            except ProtocolError:  # the server ended the watch: watch again
                continue


def setup(plane: ControlPlane) -> None:
    """A ClusterQueue with room for every step, and the two namespaces with their echo Agent."""
    group_version = "kueue.x-k8s.io/v1beta2"
    plenty = [{"name": "pods", "nominalQuota": "10000"}]
    objects: list[dict[str, Any]] = [
        {"apiVersion": group_version, "kind": "ResourceFlavor",
         "metadata": {"name": "default-flavor"}},
        {"apiVersion": group_version, "kind": "ClusterQueue", "metadata": {"name": "bench"},
         "spec": {"namespaceSelector": {}, "resourceGroups": [
             {"coveredResources": ["pods"],
              "flavors": [{"name": "default-flavor", "resources": plenty}]}]}},
    ]  # fmt: skip
    for namespace, queue in NAMESPACES.items():
        labels = {"nofx.dev/queue-name": queue} if queue else {}
        objects.append(
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": namespace, "labels": labels}}
        )  # fmt: skip
        if queue:
            objects.append(
                {"apiVersion": group_version, "kind": "LocalQueue",
                 "metadata": {"name": queue, "namespace": namespace},
                 "spec": {"clusterQueue": "bench"}}
            )  # fmt: skip
        objects.append(
            {"apiVersion": "nofx.dev/v1alpha1", "kind": "Agent",
             "metadata": {"name": "echo", "namespace": namespace},
             "spec": {"image": "example.invalid/echo:1",
                      "podAnnotations": {"kwok.nofx.dev/duration": "1s"}}}
        )  # fmt: skip
    document = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    _kubectl(plane, "apply", "-f", "-", stdin=document)


def apply_runs(api: client.ApiClient, namespace: str, runs: int, rate: float) -> dict[str, float]:
    """Creates `runs` Runs at `rate` per second; returns when each create call returned."""
    custom = client.CustomObjectsApi(api)
    applied: dict[str, float] = {}
    start = time.monotonic()
    for index in range(runs):
        time.sleep(max(0.0, start + index / rate - time.monotonic()))
        name = f"r{index}"
        body = {"apiVersion": "nofx.dev/v1alpha1", "kind": "Run", "metadata": {"name": name},
                "spec": {"steps": [{"name": "work", "agentRef": {"name": "echo"}}]}}  # fmt: skip
        custom.create_namespaced_custom_object("nofx.dev", "v1alpha1", namespace, "runs", body)
        applied[name] = time.monotonic()
    return applied


def cpu_seconds(processes: list[ManagedProcess]) -> dict[str, float]:
    """User + system CPU seconds each process used so far (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for process in processes:
        assert process.popen is not None
        fields = Path(f"/proc/{process.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[process.name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "runs": len(ordered),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p95_ms": round(1000 * ordered[max(0, round(0.95 * len(ordered)) - 1)], 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100, help="Runs per namespace")
    parser.add_argument("--rate", type=float, default=5.0, help="Runs applied per second")
    args = parser.parse_args()
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix="nofx-bench-kueue-")), kueue=True)
    plane.start()
    operator = None
    try:
        api = config.new_client_from_config(str(plane.kubeconfig))
        _apply_crds(plane, REPO_ROOT / "crds")
        health = free_port()
        operator = ManagedProcess(
            "nofx-operator",
            [
                sys.executable, "-m", "nofx.cli", "operator", "--standalone", "--kueue",
                "--kubeconfig", str(plane.kubeconfig),
                "--metrics-port", str(free_port()), "--health-port", str(health),
            ],
            plane.state_dir / "logs" / "operator.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        operator.start()
        wait_until(lambda: _up(f"http://127.0.0.1:{health}/healthz"), 60, "the operator")
        setup(plane)
        pods = PodsRunning(client.CoreV1Api(api))
        results: dict[str, Any] = {
            "rate_per_second": args.rate,
            "runs": args.runs,
            "cores": os.cpu_count(),
            # The machine is shared: its load before the measurement says how far to trust it.
            "load_average_1m_before": round(os.getloadavg()[0], 2),
        }
        processes = [*plane.processes, operator]
        for namespace in NAMESPACES:
            cpu_before = cpu_seconds(processes)
            applied = apply_runs(api, namespace, args.runs, args.rate)
            keys = [(namespace, run) for run in applied]
            wait_until(lambda: all(k in pods.seen for k in keys), 120, f"{namespace}'s Pods")  # noqa: B023 - called at once
            latencies = [pods.seen[(namespace, run)] - at for run, at in applied.items()]
            results[namespace] = summary(latencies)
            cpu_after = cpu_seconds(processes)
            results[namespace]["cpu_seconds"] = {
                name: round(cpu_after[name] - cpu_before[name], 1) for name in cpu_after
            }
        pods.stop.set()
        results["load_average_1m_after"] = round(os.getloadavg()[0], 2)
        results["overhead_p50_ms"] = round(
            results["queued"]["p50_ms"] - results["plain"]["p50_ms"], 1
        )
        results["overhead_p95_ms"] = round(
            results["queued"]["p95_ms"] - results["plain"]["p95_ms"], 1
        )
        _write(results)
        return 0
    finally:
        if operator is not None:
            operator.stop()
        plane.stop()


def _apply_crds(plane: ControlPlane, crds: Path) -> None:
    _kubectl(plane, "apply", "--server-side", "-f", str(crds))
    _kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))


def _kubectl(plane: ControlPlane, *args: str, stdin: str | None = None) -> None:
    command = [str(tool_path("kubectl")), "--kubeconfig", str(plane.kubeconfig), *args]
    subprocess.run(command, input=stdin, text=True, capture_output=True, check=True)


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _write(results: dict[str, Any]) -> None:
    (HERE / "kueue.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Apply → step Pod Running, without and with Kueue",
        "",
        f"{results['runs']} one-step Runs per namespace at {results['rate_per_second']:g}/s "
        "(`make bench-kueue`); the queue has room for every step. "
        f"{results['cores']} cores; 1-minute load average {results['load_average_1m_before']} "
        f"before, {results['load_average_1m_after']} after.",
        "",
        "| namespace | runs | p50 ms | p95 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for namespace in NAMESPACES:
        row = results[namespace]
        lines.append(
            f"| {namespace} | {row['runs']} | {row['p50_ms']} | {row['p95_ms']} | {row['max_ms']} |"
        )
    lines += [
        "",
        "CPU seconds each process used while each namespace's Runs were applied and started:",
    ]
    lines += [
        "",
        "| process | " + " | ".join(NAMESPACES) + " |",
        "| --- |" + " --- |" * len(NAMESPACES),
    ]
    for name in results["plain"]["cpu_seconds"]:
        used = [str(results[namespace]["cpu_seconds"][name]) for namespace in NAMESPACES]
        lines.append(f"| {name} | " + " | ".join(used) + " |")
    lines += [
        "",
        f"Kueue's admission adds {results['overhead_p50_ms']} ms at the median and "
        f"{results['overhead_p95_ms']} ms at p95.",
    ]
    (HERE / "kueue.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
