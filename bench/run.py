"""`make bench`: the operator's latency, throughput and cost on the real local control plane.

Pods run on kwok with a short fixed lifetime, so the figures show what the operator (and the
control plane) cost, not what agents do. Writes bench/results.json, bench/summary.md and
bench/latency.png, each with the machine it ran on. Figures are measured from the outside: a
watch of our own sees Runs and Jobs appear and finish, with this process's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from nofx.localcluster.controlplane import ControlPlane
from nofx.localcluster.postgres import PostgresServer
from nofx.localcluster.processes import ManagedProcess, free_port, wait_until
from nofx.localcluster.tools import REPO_ROOT, tool_path
from nofx.mirror.store import Store

HERE = Path(__file__).resolve().parent
STEP_SECONDS = "1s"  # every step Pod "runs" this long on kwok


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    if len(values) < 2:
        return {"n": len(values), "p50": None, "p95": None, "p99": None}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50": round(cuts[49] * 1000, 1),
        "p95": round(cuts[94] * 1000, 1),
        "p99": round(cuts[98] * 1000, 1),
    }


@dataclass
class Observer:
    """Our own watches: when each Job appeared and finished, when each Run succeeded."""

    api: client.ApiClient
    namespace: str
    job_added: dict[str, float] = field(default_factory=dict)
    job_done: dict[str, float] = field(default_factory=dict)
    job_run_step: dict[str, tuple[str, str]] = field(default_factory=dict)
    run_done: dict[str, float] = field(default_factory=dict)
    watches: list[watch.Watch] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._jobs, self._runs):
            threading.Thread(target=self._quietly(target), daemon=True).start()

    def stop(self) -> None:
        for w in self.watches:
            w.stop()

    def _quietly(self, target: Any) -> Any:
        def run() -> None:
            with contextlib.suppress(Exception):  # the control plane stopping ends the watch
                target()

        return run

    def _jobs(self) -> None:
        w = watch.Watch()
        self.watches.append(w)
        for event in w.stream(client.BatchV1Api(self.api).list_namespaced_job, self.namespace):
            now = time.monotonic()
            job = event["object"]
            name = job.metadata.name
            labels = job.metadata.labels or {}
            self.job_added.setdefault(name, now)
            self.job_run_step[name] = (
                labels.get("nofx.dev/run", ""),
                labels.get("nofx.dev/step", ""),
            )
            conditions = (job.status.conditions or []) if job.status else []
            if any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions):
                self.job_done.setdefault(name, now)

    def _runs(self) -> None:
        w = watch.Watch()
        self.watches.append(w)
        custom = client.CustomObjectsApi(self.api)
        for event in w.stream(
            custom.list_namespaced_custom_object, "nofx.dev", "v1alpha1", self.namespace, "runs"
        ):
            body = event["object"]
            if (body.get("status") or {}).get("phase") == "Succeeded":
                self.run_done.setdefault(body["metadata"]["name"], time.monotonic())


class Bench:
    def __init__(self, state_dir: Path) -> None:
        self.plane = ControlPlane(state_dir / "plane")
        self.postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="nofx-bench-pg-")) / "server")
        self.operator: ManagedProcess | None = None
        self.metrics_port = free_port()
        self.api: client.ApiClient | None = None

    def start(self) -> None:
        self.postgres.start()
        self.plane.start()
        self.api = config.new_client_from_config(config_file=str(self.plane.kubeconfig))
        self.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        with Store(self.postgres.dsn, "bench") as store:
            store.migrate()
        health = free_port()
        self.operator = ManagedProcess(
            "nofx-operator",
            [
                sys.executable, "-m", "nofx.cli", "operator", "--standalone",
                "--kubeconfig", str(self.plane.kubeconfig),
                "--metrics-port", str(self.metrics_port), "--health-port", str(health),
                "--database-url", self.postgres.dsn, "--region", "bench",
            ],
            self.plane.state_dir / "logs" / "operator.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        self.operator.start()
        wait_until(
            lambda: self._get(f"http://127.0.0.1:{health}/healthz") is not None, 60, "operator"
        )

    def stop(self) -> None:
        if self.operator:
            self.operator.stop()
        self.plane.stop()
        self.postgres.stop()

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        command = [str(tool_path("kubectl")), "--kubeconfig", str(self.plane.kubeconfig), *args]
        return subprocess.run(
            command, input=stdin, text=True, capture_output=True, check=True
        ).stdout

    def _get(self, url: str) -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    def metric(self, name: str) -> float:
        """Sum of every sample of a metric on the operator's /metrics."""
        text = self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or ""
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )

    def operator_usage(self) -> dict[str, float]:
        assert self.operator and self.operator.popen
        pid = self.operator.popen.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu_seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return {"rss_mib": round(rss_kb / 1024, 1), "cpu_seconds": round(cpu_seconds, 2)}

    # --- scenarios ---

    def limit(self, jobs: int, workers: int = 16) -> dict[str, Any]:
        """The most this API server takes here: a tight client of our own creates Jobs and
        patches their status, as the operator and the Job controller would."""
        assert self.api is not None
        namespace = "bench-limit"
        self.kubectl("create", "namespace", namespace)
        batch = client.BatchV1Api(self.api)

        def one(index: int) -> None:
            name = f"limit-{index}"
            batch.create_namespaced_job(namespace, _job(name))
            batch.patch_namespaced_job_status(name, namespace, {"status": {"active": 1}})

        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(jobs)))
        seconds = time.monotonic() - started
        self.kubectl("delete", "namespace", namespace, "--wait=false")
        return {
            "jobs": jobs,
            "seconds": round(seconds, 2),
            "jobs_per_second": round(jobs / seconds, 1),
            "api_writes_per_second": round(2 * jobs / seconds, 1),
        }

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        """Runs of three sequential steps applied at a steady rate."""
        assert self.api is not None
        namespace = f"bench-{int(rate)}"
        self.kubectl("create", "namespace", namespace)
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_agent_and_template()))
        time.sleep(1)  # the operator's indexes learn the Agent and Template
        observer = Observer(self.api, namespace)
        observer.start()
        time.sleep(0.5)
        custom = client.CustomObjectsApi(self.api)
        created: dict[str, float] = {}
        usage_before = self.operator_usage()
        events_before = self.metric("nofx_mirror_events_total")
        count = int(rate * seconds)
        started = time.monotonic()
        for index in range(count):
            due = started + index / rate
            time.sleep(max(0.0, due - time.monotonic()))
            name = f"r{index}"
            created[name] = time.monotonic()
            custom.create_namespaced_custom_object(
                "nofx.dev", "v1alpha1", namespace, "runs",
                {"apiVersion": "nofx.dev/v1alpha1", "kind": "Run", "metadata": {"name": name},
                 "spec": {"templateRef": {"name": "three"}}},
            )  # fmt: skip
        applied_for = time.monotonic() - started
        deadline = time.monotonic() + 120 + seconds
        while len(observer.run_done) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        finished_for = time.monotonic() - started
        mirror_deadline = time.monotonic() + 60
        while self.metric("nofx_mirror_events_total") - events_before < count * 8 and (
            time.monotonic() < mirror_deadline
        ):
            time.sleep(0.5)
        mirror_seconds = time.monotonic() - started
        observer.stop()
        usage_after = self.operator_usage()

        first_job: dict[str, float] = {}
        by_run: dict[str, dict[str, str]] = {}
        for job, (run, step) in observer.job_run_step.items():
            by_run.setdefault(run, {})[step] = job
            added = observer.job_added[job]
            first_job[run] = min(first_job.get(run, added), added)
        next_job = []
        for steps in by_run.values():
            for before, after in (("a", "b"), ("b", "c")):
                if before in steps and after in steps and steps[before] in observer.job_done:
                    next_job.append(
                        observer.job_added[steps[after]] - observer.job_done[steps[before]]
                    )
        jobs = len(observer.job_added)
        return {
            "runs_per_second_target": rate,
            "runs": count,
            "succeeded": len(observer.run_done),
            "runs_per_second_applied": round(count / applied_for, 1),
            "runs_per_second_finished": round(len(observer.run_done) / finished_for, 1),
            "step_jobs_per_second": round(jobs / finished_for, 1),
            "apply_to_first_job_ms": percentiles(
                [first_job[r] - created[r] for r in first_job if r in created]
            ),
            "step_finished_to_next_job_ms": percentiles(next_job),
            "apply_to_succeeded_ms": percentiles(
                [observer.run_done[r] - created[r] for r in observer.run_done if r in created]
            ),
            "operator_cpu_seconds": round(
                usage_after["cpu_seconds"] - usage_before["cpu_seconds"], 2
            ),
            "operator_rss_mib": usage_after["rss_mib"],
            "mirror_events": int(self.metric("nofx_mirror_events_total") - events_before),
            "mirror_events_per_second": round(
                (self.metric("nofx_mirror_events_total") - events_before) / mirror_seconds, 1
            ),
        }


def _job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": {"kwok.nofx.dev/duration": "1h"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "example.invalid/limit:1"}],
                },
            }
        },
    }


def _agent_and_template() -> dict[str, Any]:
    steps = [
        {"name": "a", "agentRef": {"name": "bench"}},
        {"name": "b", "agentRef": {"name": "bench"}, "dependsOn": ["a"]},
        {"name": "c", "agentRef": {"name": "bench"}, "dependsOn": ["b"]},
    ]
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "nofx.dev/v1alpha1",
                "kind": "Agent",
                "metadata": {"name": "bench"},
                "spec": {
                    "image": "example.invalid/bench:1",
                    "podAnnotations": {"kwok.nofx.dev/duration": STEP_SECONDS},
                    "pricing": {"perHour": "1"},
                },
            },
            {
                "apiVersion": "nofx.dev/v1alpha1",
                "kind": "Template",
                "metadata": {"name": "three"},
                "spec": {"steps": steps},
            },
        ],
    }


def summary(results: dict[str, Any]) -> str:
    lines = [
        "# NOFX benchmark",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"{results['machine']['memory_gib']} GiB; Python {results['machine']['python']}; "
        f"step Pods live {STEP_SECONDS} on kwok.",
        "",
        f"Limit (our own client creating Jobs and patching their status, 16 threads): "
        f"{results['limit']['jobs_per_second']} Jobs/s "
        f"({results['limit']['api_writes_per_second']} API writes/s).",
        "",
        "| Runs/s target | applied | finished | step Jobs/s | ratio of limit "
        "| apply→first Job p50/p95/p99 ms | step done→next Job p50/p95/p99 ms "
        "| apply→Succeeded p95 ms | mirror events/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["latency"]:
        first = row["apply_to_first_job_ms"]
        nxt = row["step_finished_to_next_job_ms"]
        done = row["apply_to_succeeded_ms"]
        ratio = row["step_jobs_per_second"] / results["limit"]["jobs_per_second"]
        lines.append(
            f"| {row['runs_per_second_target']} | {row['runs_per_second_applied']} "
            f"| {row['runs_per_second_finished']} | {row['step_jobs_per_second']} | {ratio:.0%} "
            f"| {first['p50']}/{first['p95']}/{first['p99']} "
            f"| {nxt['p50']}/{nxt['p95']}/{nxt['p99']} "
            f"| {done['p95']} | {row['mirror_events_per_second']} |"
        )
    lines += [
        "",
        "Keys of results.json: `machine` (where it ran); `limit` (jobs, seconds, jobs_per_second,"
        " api_writes_per_second); `latency` (one entry per target rate: runs, succeeded,"
        " runs_per_second_applied/finished, step_jobs_per_second, apply_to_first_job_ms,"
        " step_finished_to_next_job_ms and apply_to_succeeded_ms as n/p50/p95/p99 in"
        " milliseconds, operator_cpu_seconds, operator_rss_mib, mirror_events,"
        " mirror_events_per_second).",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [row["runs_per_second_target"] for row in results["latency"]]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("apply_to_first_job_ms", "apply → first Job"),
        ("step_finished_to_next_job_ms", "step done → next Job"),
    ):
        for quantile, style in (("p50", "-o"), ("p95", "--o")):
            axis.plot(rates, [row[key][quantile] for row in results["latency"]], style,
                      label=f"{label} {quantile}")  # fmt: skip
    axis.set_xlabel("Runs applied per second")
    axis.set_ylabel("milliseconds")
    axis.set_title(f"NOFX operator latency ({results['machine']['cores']} cores)")
    axis.legend(fontsize=8)
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="5,20,50", help="Runs/s to apply, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate lasts")
    parser.add_argument("--limit-jobs", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nofx-bench-") as state_dir:
        bench = Bench(Path(state_dir))
        try:
            bench.start()
            results: dict[str, Any] = {"machine": machine(), "step_seconds": STEP_SECONDS}
            results["latency"] = []
            for rate in (float(r) for r in args.rates.split(",")):
                row = bench.latency(rate, args.seconds)
                print(f"{rate} Runs/s: {row}", flush=True)
                results["latency"].append(row)
            # Last: its long-lived Jobs would otherwise load the controllers during the others.
            results["limit"] = bench.limit(args.limit_jobs)
            print(f"limit: {results['limit']}", flush=True)
        finally:
            bench.stop()
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (HERE / "summary.md").write_text(summary(results))
    plot(results, HERE / "latency.png")
    print((HERE / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
