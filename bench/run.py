"""`make bench`: the operator's latency, throughput and cost on the real local control plane.

Pods run on kwok with a short fixed lifetime, so the figures show what the operator (and the
control plane) cost, not what agents do. Writes bench/results.json, bench/summary.md and
bench/latency.png, each with the machine it ran on. Figures are measured from the outside: a
watch of our own sees Runs and Jobs appear and finish, with this process's clock.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import report
from kubernetes import client, config, watch
from prometheus_client.parser import text_string_to_metric_families

from nofx.mirror.store import Store
from nofx_dev import policies
from nofx_dev.audit import AuditLog, writes_per_run
from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.processes import ManagedProcess, free_port, wait_until
from nofx_dev.tools import REPO_ROOT, tool_path

HERE = Path(__file__).resolve().parent
STEP_SECONDS = "1s"  # every step Pod "runs" this long on kwok
EVENTS_PER_RUN = 8  # audit events of a three-step Run that succeeds
# The operator's own client certificate: its writes are told apart in the API server's audit log
# from those of the controllers, the scheduler, kwok and this benchmark's client (nofx-admin).
OPERATOR_USER = "nofx-operator"


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


class RawWatch(watch.Watch):
    """A watch that hands out objects as decoded JSON: building the client's models for every
    Job and Pod event cost this benchmark's client more CPU than the operator under test."""

    def get_return_type(self, func: Any) -> None:
        return None


@dataclass
class Observer:
    """Our own watches: when each Job appeared and finished, when each Run succeeded, and the
    stages of each Job's Pod (created, bound to a node, running, finished)."""

    api: client.ApiClient
    namespace: str
    job_added: dict[str, float] = field(default_factory=dict)
    job_done: dict[str, float] = field(default_factory=dict)
    pod_stages: dict[str, dict[str, float]] = field(default_factory=dict)  # Job → stage → time
    job_run_step: dict[str, tuple[str, str]] = field(default_factory=dict)
    run_done: dict[str, float] = field(default_factory=dict)
    watches: list[watch.Watch] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._jobs, self._runs, self._pods):
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
        w = RawWatch()
        self.watches.append(w)
        for event in w.stream(client.BatchV1Api(self.api).list_namespaced_job, self.namespace):
            now = time.monotonic()
            job = event["object"]
            name = job["metadata"]["name"]
            labels = job["metadata"].get("labels") or {}
            self.job_added.setdefault(name, now)
            self.job_run_step[name] = (
                labels.get("nofx.dev/run", ""),
                labels.get("nofx.dev/step", ""),
            )
            conditions = (job.get("status") or {}).get("conditions") or []
            finished = ("Complete", "Failed")
            if any(c["type"] in finished and c["status"] == "True" for c in conditions):
                self.job_done.setdefault(name, now)

    def _pods(self) -> None:
        w = RawWatch()
        self.watches.append(w)
        for event in w.stream(client.CoreV1Api(self.api).list_namespaced_pod, self.namespace):
            now = time.monotonic()
            pod = event["object"]
            job = (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
            if not job:
                continue
            stages = self.pod_stages.setdefault(job, {})
            stages.setdefault("pod created", now)
            if pod["spec"].get("nodeName"):
                stages.setdefault("pod bound", now)
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Running", "Succeeded", "Failed"):
                stages.setdefault("pod running", now)
            if phase in ("Succeeded", "Failed"):
                stages.setdefault("pod finished", now)

    def stage_breakdown(self, next_job: dict[str, float] | None = None) -> dict[str, Any]:
        """Where a step's time goes: p50/p95 of each stage between the Job's creation and
        the next Job of its Run (`next_job`: a Job → when its successor appeared)."""
        order = ["job created", "pod created", "pod bound", "pod running", "pod finished"]
        order += ["job done", "next job"]
        gaps: dict[str, list[float]] = {}
        for job, added in self.job_added.items():
            times = {"job created": added, **self.pod_stages.get(job, {})}
            if job in self.job_done:
                times["job done"] = self.job_done[job]
            if next_job and job in next_job:
                times["next job"] = next_job[job]
            for before, after in itertools.pairwise(order):
                if before in times and after in times:
                    gaps.setdefault(f"{before} → {after}", []).append(times[after] - times[before])
        return {stage: percentiles(values) for stage, values in gaps.items()}

    def _runs(self) -> None:
        w = RawWatch()
        self.watches.append(w)
        custom = client.CustomObjectsApi(self.api)
        for event in w.stream(
            custom.list_namespaced_custom_object, "nofx.dev", "v1alpha1", self.namespace, "runs"
        ):
            body = event["object"]
            if (body.get("status") or {}).get("phase") == "Succeeded":
                self.run_done.setdefault(body["metadata"]["name"], time.monotonic())


class Bench:
    def __init__(self, state_dir: Path, profiling: bool = False) -> None:
        self.plane = ControlPlane(state_dir / "plane", audit_log=True, profiling=profiling)
        self.audit = AuditLog(self.plane.audit_log_path)
        self.postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="nofx-bench-pg-")) / "server")
        self.operator: ManagedProcess | None = None
        self.metrics_port = free_port()
        self.api: client.ApiClient | None = None

    def start(self) -> None:
        self.postgres.start()
        self.plane.start()
        self.api = config.new_client_from_config(config_file=str(self.plane.kubeconfig))
        self.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        # As the chart installs them on 1.36+: new Runs carry the audit finalizer from creation.
        self.kubectl("apply", "-k", str(REPO_ROOT / "policies"))
        policies.wait_until_enforced(self.plane.kubeconfig)
        with Store(self.postgres.dsn, "bench") as store:
            store.migrate()
        operator_kubeconfig = self.plane.kubeconfig_for(OPERATOR_USER, groups=["system:masters"])
        health = free_port()
        self.operator = ManagedProcess(
            "nofx-operator",
            [
                sys.executable, "-m", "nofx.cli", "operator", "--standalone",
                "--kubeconfig", str(operator_kubeconfig),
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

    def scrape(self) -> Samples:
        """Every sample on the operator's /metrics."""
        return parse_samples(self._get(f"http://127.0.0.1:{self.metrics_port}/metrics") or "")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of one metric on the operator's /metrics that carry these labels."""
        return self.scrape().total(name, **labels)

    def mirror_drained(self) -> bool:
        """No event waits for Postgres, twice in a row (between writes the queue looks empty
        for a moment)."""
        if self.metric("nofx_mirror_pending_age_seconds") > 0:
            return False
        time.sleep(2)
        return self.metric("nofx_mirror_pending_age_seconds") == 0

    def apiserver_requests(self) -> Samples:
        """apiserver_request_total: every request the API server served, by verb and resource."""
        assert self.api is not None
        method, url, headers, _, _ = self.api.param_serialize(
            "GET", "/metrics", auth_settings=["BearerToken"]
        )
        response = self.api.call_api(method, url, header_params=headers)
        response.read()
        text = response.data.decode()
        return parse_samples(text).only("apiserver_request_total")

    def operator_usage(self) -> dict[str, float]:
        assert self.operator and self.operator.popen
        pid = self.operator.popen.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))
        )
        return {"rss_mib": round(rss_kb / 1024, 1), "cpu_seconds": round(_cpu_seconds(pid), 2)}

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds used so far by each server on these cores: the control plane's, the
        operator, Postgres (all its processes) and this benchmark's client."""
        pids = {proc.name: proc.popen.pid for proc in self.plane.processes if proc.popen}
        if self.operator and self.operator.popen:
            pids["operator"] = self.operator.popen.pid
        used = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        postmaster = int((self.postgres.data_dir / "postmaster.pid").read_text().split()[0])
        used["postgres"] = sum(_cpu_seconds(pid) for pid in _with_children(postmaster))
        own = os.times()
        used["benchmark client"] = own.user + own.system
        return used

    @contextlib.contextmanager
    def profiled(self, out: Path | None) -> Iterator[None]:
        """py-spy samples the operator (the thread holding the GIL) while the block runs,
        and the API server profiles itself for 20 s of it (apiserver.pprof, for go tool pprof)."""
        if out is None:
            yield
            return
        assert self.operator and self.operator.popen
        out.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._apiserver_profile, args=(out,), daemon=True).start()
        command = [
            # --gil: only the thread running Python, so a thread waiting on a socket the
            # profiler cannot tell idle does not pass for CPU.
            str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--gil",
            "--pid", str(self.operator.popen.pid), "--rate", "200",
            "--format", "raw", "--output", str(out / "profile.txt"),
        ]  # fmt: skip
        sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            yield
        finally:
            sampler.send_signal(signal.SIGINT)
            sampler.wait(timeout=60)

    def _apiserver_profile(self, out: Path) -> None:
        time.sleep(3)  # past the first Runs' creation, into the steady part
        command = [
            str(tool_path("kubectl")), "--kubeconfig", str(self.plane.kubeconfig),
            "get", "--raw", "/debug/pprof/profile?seconds=20",
        ]  # fmt: skip
        with open(out / "apiserver.pprof", "wb") as profile:
            subprocess.run(command, stdout=profile, check=False)

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
            batch.create_namespaced_job(namespace, _job(name, "1h"))
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

    def lifecycle_limit(self, jobs: int, workers: int = 16) -> dict[str, Any]:
        """The most step Jobs this control plane runs to completion per second: a tight
        client creates Jobs with the benchmark's Pod lifetime, with no operator involved."""
        assert self.api is not None
        namespace = "bench-lifecycle"
        self.kubectl("create", "namespace", namespace)
        observer = Observer(self.api, namespace)
        observer.start()
        time.sleep(0.5)
        batch = client.BatchV1Api(self.api)
        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(
                pool.map(
                    lambda i: batch.create_namespaced_job(namespace, _job(f"j{i}", STEP_SECONDS)),
                    range(jobs),
                )
            )
        deadline = time.monotonic() + 600
        while len(observer.job_done) < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        observer.stop()
        rate = sustained_rate(list(observer.job_done.values()))
        stages = observer.stage_breakdown()
        self.kubectl("delete", "namespace", namespace, "--wait=false")
        return {
            "jobs": jobs,
            "completed": len(observer.job_done),
            "seconds": round(time.monotonic() - started, 2),
            "jobs_per_second": rate,
            "step_stages_ms": stages,
        }

    def chained_limit(self, chains: int, length: int = 3) -> dict[str, Any]:
        """Step Jobs per second with the Runs' shape but no operator: `chains` chains of
        `length` Jobs at once, our own client creating each chain's next Job as soon as its
        watch sees the previous one complete. An operator that cost nothing would reach it."""
        assert self.api is not None
        namespace = "bench-chains"
        self.kubectl("create", "namespace", namespace)
        batch = client.BatchV1Api(self.api)
        done: dict[str, float] = {}
        pool = ThreadPoolExecutor(16)

        def create(chain: int, step: int) -> None:
            batch.create_namespaced_job(namespace, _job(f"c{chain}-{step}", STEP_SECONDS))

        def follow() -> None:
            w = RawWatch()
            for event in w.stream(batch.list_namespaced_job, namespace, timeout_seconds=600):
                job = event["object"]
                name = job["metadata"]["name"]
                conditions = (job.get("status") or {}).get("conditions") or []
                if name in done or not any(
                    c["type"] == "Complete" and c["status"] == "True" for c in conditions
                ):
                    continue
                done[name] = time.monotonic()
                chain, step = (int(part) for part in name[1:].split("-"))
                if step + 1 < length:
                    pool.submit(create, chain, step + 1)
                if len(done) == chains * length:
                    w.stop()

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        time.sleep(0.5)
        started = time.monotonic()
        for chain in range(chains):
            pool.submit(create, chain, 0)
        watcher.join(timeout=600)
        pool.shutdown(wait=False, cancel_futures=True)
        self.kubectl("delete", "namespace", namespace, "--wait=false")
        return {
            "chains": chains,
            "jobs": chains * length,
            "completed": len(done),
            "seconds": round(time.monotonic() - started, 2),
            "jobs_per_second": sustained_rate(list(done.values())),
        }

    def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        """Runs of three sequential steps applied at a steady rate."""
        namespace = f"bench-{int(rate)}"
        return self._runs_at(namespace, int(rate * seconds), rate)

    def throughput(self, runs: int) -> dict[str, Any]:
        """Runs applied all at once: how many Runs and step Jobs per second the whole system
        sustains (between the 10th and 90th percentile of finishes), and the mirror under it."""
        return self._runs_at("bench-throughput", runs, rate=None)

    def _runs_at(self, namespace: str, count: int, rate: float | None) -> dict[str, Any]:
        assert self.api is not None
        self.kubectl("create", "namespace", namespace)
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_agent_and_templates()))
        time.sleep(1)  # the operator's indexes learn the Agent and Template
        observer = Observer(self.api, namespace)
        observer.start()
        time.sleep(0.5)
        custom = client.CustomObjectsApi(self.api)
        created: dict[str, float] = {}
        usage_before = self.operator_usage()
        cpu_before = self.cpu_by_process()
        metrics_before = self.scrape()
        requests_before = self.apiserver_requests()
        audit_mark = self.audit.mark()

        def create(index: int) -> None:
            name = f"r{index}"
            created[name] = time.monotonic()
            custom.create_namespaced_custom_object(
                "nofx.dev", "v1alpha1", namespace, "runs", _run(name, "three")
            )

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            # Open loop: each Run is sent on its schedule, however slow the previous ones were.
            sent = []
            for index in range(count):
                if rate is not None:
                    time.sleep(max(0.0, started + index / rate - time.monotonic()))
                sent.append(pool.submit(create, index))
            for future in sent:
                future.result()
        applied_for = time.monotonic() - started
        deadline = time.monotonic() + 300 + count / 2
        while len(observer.run_done) < count and time.monotonic() < deadline:
            time.sleep(0.5)
        finished_for = time.monotonic() - started
        events_before = metrics_before.total("nofx_mirror_events_total")
        mirror_deadline = time.monotonic() + 120
        while self.metric("nofx_mirror_events_total") - events_before < count * EVENTS_PER_RUN:
            if time.monotonic() > mirror_deadline:
                break
            time.sleep(0.5)
        mirror_seconds = time.monotonic() - started
        observer.stop()
        usage_after = self.operator_usage()
        cpu_after = self.cpu_by_process()
        metrics_after = self.scrape()
        requests = self.apiserver_requests().minus(requests_before)
        writes = self.audit.read_since(audit_mark)

        first_job: dict[str, float] = {}
        by_run: dict[str, dict[str, str]] = {}
        for job, (run, step) in observer.job_run_step.items():
            by_run.setdefault(run, {})[step] = job
            added = observer.job_added[job]
            first_job[run] = min(first_job.get(run, added), added)
        next_job = []
        successor_added: dict[str, float] = {}
        for steps in by_run.values():
            for before, after in (("a", "b"), ("b", "c")):
                if before in steps and after in steps:
                    successor_added[steps[before]] = observer.job_added[steps[after]]
                if before in steps and after in steps and steps[before] in observer.job_done:
                    next_job.append(
                        observer.job_added[steps[after]] - observer.job_done[steps[before]]
                    )
        mirror_events = metrics_after.total("nofx_mirror_events_total") - events_before
        reconciles = metrics_after.total("nofx_reconcile_duration_seconds_count") - (
            metrics_before.total("nofx_reconcile_duration_seconds_count")
        )
        cpu = usage_after["cpu_seconds"] - usage_before["cpu_seconds"]
        finishes = list(observer.run_done.values())
        run_rate = len(finishes) / (max(finishes) - started) if finishes else 0.0
        return {
            "runs_per_second_target": rate,
            "runs": count,
            "succeeded": len(observer.run_done),
            "runs_per_second_applied": round(count / applied_for, 1),
            "runs_per_second_finished": round(run_rate, 1),
            "step_jobs_per_second": sustained_rate(list(observer.job_done.values())),
            "wall_seconds": round(finished_for, 1),
            "apply_to_first_job_ms": percentiles(
                [first_job[r] - created[r] for r in first_job if r in created]
            ),
            "step_finished_to_next_job_ms": percentiles(next_job),
            "step_stages_ms": observer.stage_breakdown(successor_added),
            "apply_to_succeeded_ms": percentiles(
                [observer.run_done[r] - created[r] for r in observer.run_done if r in created]
            ),
            "reconciles_per_run": round(reconciles / count, 2),
            "operator_cpu_seconds": round(cpu, 2),
            "operator_cpu_ms_per_run": round(1000 * cpu / count, 1),
            "operator_rss_mib": usage_after["rss_mib"],
            "cpu_ms_per_run_by_process": {
                name: round(1000 * (cpu_after[name] - cpu_before.get(name, 0.0)) / count, 1)
                for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0.0) - cpu_after[n])
            },
            "api_requests_per_run": requests.per_request_kind(count),
            "writes_per_run": writes_per_run(
                writes, len(observer.run_done), namespace, OPERATOR_USER
            ),
            "step_pod_reads_per_run": {
                source: round(
                    metrics_after.minus(metrics_before).total(
                        "nofx_step_pod_reads_total", source=source
                    )
                    / count,
                    2,
                )
                for source in ("watch", "list")
            },
            "mirror_events": int(mirror_events),
            "mirror_events_per_second": round(mirror_events / mirror_seconds, 1),
            "mirror_lag_ms": metrics_after.minus(metrics_before).histogram_quantiles(
                "nofx_mirror_lag_seconds"
            ),
        }

    def probe(self, namespace: str, runs: int, rate: float) -> dict[str, Any]:
        """The cost of reconciling: a few Runs applied slowly, measured from the operator's
        own metrics and CPU time."""
        before, usage_before = self.scrape(), self.operator_usage()
        row = self._runs_at(namespace, runs, rate)
        after, usage_after = self.scrape(), self.operator_usage()
        delta = after.minus(before)
        reconciles = delta.total("nofx_reconcile_duration_seconds_count")
        cpu = usage_after["cpu_seconds"] - usage_before["cpu_seconds"]
        return {
            "runs_present": int(after.total("nofx_runs")),
            "reconciles": int(reconciles),
            "reconcile_ms_mean": round(
                1000 * delta.total("nofx_reconcile_duration_seconds_sum") / reconciles, 2
            ),
            "operator_cpu_ms_per_reconcile": round(1000 * cpu / reconciles, 2),
            "apply_to_first_job_ms": row["apply_to_first_job_ms"],
            "operator_rss_mib": usage_after["rss_mib"],
        }

    def fill(self, runs: int) -> dict[str, Any]:
        """Keeps `runs` Runs in the cluster, each waiting for an approval (no Jobs), and
        measures what holding them costs the operator."""
        assert self.api is not None
        namespace = "bench-scale"
        self.kubectl("create", "namespace", namespace)
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_agent_and_templates()))
        time.sleep(1)
        custom = client.CustomObjectsApi(self.api)
        waiting_before = self.metric("nofx_runs", phase="WaitingApproval")
        usage_before = self.operator_usage()
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda i: custom.create_namespaced_custom_object(
                        "nofx.dev", "v1alpha1", namespace, "runs", _run(f"held{i}", "gated")
                    ),
                    range(runs),
                )
            )
        applied_for = time.monotonic() - started
        wait_until(
            lambda: self.metric("nofx_runs", phase="WaitingApproval") - waiting_before >= runs,
            1800,
            f"{runs} Runs waiting for approval",
            interval=2,
        )
        wait_until(self.mirror_drained, 1800, "the mirror to store every event", interval=2)
        settled_for = time.monotonic() - started
        usage_settled = self.operator_usage()
        time.sleep(30)
        usage_idle = self.operator_usage()
        return {
            "runs": runs,
            "applied_seconds": round(applied_for, 1),
            "settled_seconds": round(settled_for, 1),
            "operator_cpu_seconds_to_settle": round(
                usage_settled["cpu_seconds"] - usage_before["cpu_seconds"], 1
            ),
            "operator_cpu_percent_idle": round(
                100 * (usage_idle["cpu_seconds"] - usage_settled["cpu_seconds"]) / 30, 1
            ),
            "operator_rss_mib": usage_idle["rss_mib"],
        }


@dataclass
class Samples:
    """Prometheus samples: (name, sorted labels) → value."""

    values: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def total(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and wanted <= set(ls))

    def only(self, name: str) -> Samples:
        return Samples({k: v for k, v in self.values.items() if k[0] == name})

    def minus(self, before: Samples) -> Samples:
        return Samples({k: v - before.values.get(k, 0.0) for k, v in self.values.items()})

    def per_request_kind(self, runs: int) -> dict[str, float]:
        """Requests per Run by verb, resource and subresource, e.g. "PATCH runs/status"."""
        kinds: dict[str, float] = {}
        for (_, labels), value in self.values.items():
            label = dict(labels)
            if value <= 0 or label.get("verb") in ("WATCH", "CONNECT"):
                continue
            kind = f"{label.get('verb')} {label.get('resource')}"
            if label.get("subresource"):
                kind += f"/{label['subresource']}"
            kinds[kind] = kinds.get(kind, 0.0) + value
        return {k: round(v / runs, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}

    def histogram_quantiles(self, name: str) -> dict[str, float | None]:
        """p50/p95/p99 in ms of a histogram's observations in this sample, interpolated
        within buckets as Prometheus' histogram_quantile does."""
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for (n, labels), value in self.values.items()
            if n == f"{name}_bucket"
        )
        if not buckets or buckets[-1][1] <= 0:
            return {"p50": None, "p95": None, "p99": None}
        total = buckets[-1][1]
        result: dict[str, float | None] = {}
        for quantile in (0.5, 0.95, 0.99):
            rank, lower, below = quantile * total, 0.0, 0.0
            for upper, count in buckets:
                if count >= rank:
                    if upper == float("inf"):
                        result[f"p{int(quantile * 100)}"] = round(lower * 1000, 1)
                    else:
                        share = (rank - below) / (count - below) if count > below else 1.0
                        value = lower + (upper - lower) * share
                        result[f"p{int(quantile * 100)}"] = round(value * 1000, 1)
                    break
                lower, below = upper, count
        return result


def parse_samples(text: str) -> Samples:
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return Samples(values)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_children(parent: int) -> list[int]:
    """A process and its direct children (Postgres' backends and workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry.name))
    return [parent, *children]


def sustained_rate(times: list[float]) -> float:
    """Events per second between the 10th and the 90th percentile of their times: the steady
    middle, without the ramp-up and the tail."""
    if len(times) < 10:
        return 0.0
    ordered = sorted(times)
    low, high = ordered[len(ordered) // 10], ordered[(len(ordered) * 9) // 10]
    count = (len(ordered) * 9) // 10 - len(ordered) // 10
    return round(count / (high - low), 1) if high > low else 0.0


def _job(name: str, duration: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": {"kwok.nofx.dev/duration": duration}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "example.invalid/limit:1"}],
                },
            },
        },
    }


def _run(name: str, template: str) -> dict[str, Any]:
    return {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Run",
        "metadata": {"name": name},
        "spec": {"templateRef": {"name": template}},
    }


def _agent_and_templates() -> dict[str, Any]:
    """An Agent; "three": three sequential steps; "gated": one step that waits for approval."""
    agent = {"agentRef": {"name": "bench"}}
    three = [
        {"name": "a", **agent},
        {"name": "b", **agent, "dependsOn": ["a"]},
        {"name": "c", **agent, "dependsOn": ["b"]},
    ]
    gated = [{"name": "a", **agent, "approval": {"message": "benchmark: never approved"}}]
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
            *(
                {
                    "apiVersion": "nofx.dev/v1alpha1",
                    "kind": "Template",
                    "metadata": {"name": name},
                    "spec": {"steps": steps},
                }
                for name, steps in (("three", three), ("gated", gated))
            ),
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="5,20,50", help="Runs/s to apply, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each rate lasts")
    parser.add_argument("--throughput-runs", type=int, default=300)
    parser.add_argument("--scale-runs", type=int, default=10_000)
    parser.add_argument("--probe-runs", type=int, default=100)
    parser.add_argument("--limit-jobs", type=int, default=600)
    parser.add_argument("--out", type=Path, default=HERE, help="where the results go")
    parser.add_argument(
        "--before",
        type=Path,
        help="an earlier results.json: the summary sets its main figures beside this run's",
    )
    parser.add_argument("--label", help="what this run measured (kept in results.json)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the operator with py-spy during the throughput scenario "
        "(writes profile.txt: collapsed stacks, as flamegraph tools read them) and profile "
        "the API server for 20 s of it (apiserver.pprof, for go tool pprof)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nofx-bench-") as state_dir:
        bench = Bench(Path(state_dir), profiling=args.profile)
        try:
            bench.start()
            results: dict[str, Any] = {"machine": machine(), "step_seconds": STEP_SECONDS}
            if args.label:
                results["label"] = args.label

            def step(name: str, value: Any) -> Any:
                print(f"{name}: {json.dumps(value)}", flush=True)
                return value

            # First, while the cluster holds nothing else.
            baseline = step("baseline", bench.probe("bench-probe-few", args.probe_runs, 5))
            results["latency"] = [
                step(f"{rate} Runs/s", bench.latency(rate, args.seconds))
                for rate in (float(r) for r in args.rates.split(","))
            ]
            with bench.profiled(args.out if args.profile else None):
                results["throughput"] = step("throughput", bench.throughput(args.throughput_runs))
            lifecycle = step("lifecycle limit", bench.lifecycle_limit(args.limit_jobs))
            chained = step("chained limit", bench.chained_limit(args.throughput_runs))
            held = step("held", bench.fill(args.scale_runs))
            at_scale = step("at scale", bench.probe("bench-probe-many", args.probe_runs, 5))
            results["scale"] = {"baseline": baseline, "held": held, "at_scale": at_scale}
            # Last: its long-lived Jobs would otherwise load the controllers during the others.
            api = step("api limit", bench.limit(args.limit_jobs))
            results["limit"] = {"api": api, "lifecycle": lifecycle, "chained": chained}
        finally:
            bench.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    before = json.loads(args.before.read_text()) if args.before else None
    (args.out / "summary.md").write_text(report.summary(results, before))
    report.plot(results, args.out / "latency.png")
    print((args.out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
