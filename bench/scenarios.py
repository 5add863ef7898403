"""The Run scenarios, each taking the started `Bench` first: `latency` (Runs applied at a
steady rate), `throughput` (Runs applied all at once), both through `runs_at`, which measures
latencies, rates, CPU, API requests and writes per Run; `probe` (the cost of a reconcile) and
`fill` (what holding many waiting Runs costs). Also the manifests they apply: the Agent, the
Templates and the Runs.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from measure import cpu_ms_per, percentiles, sustained_rate
from observer import Observer
from system import OPERATOR_USER, Bench

from nofx_dev.audit import writes_per_run
from nofx_dev.processes import wait_until

STEP_SECONDS = "1s"  # every step Pod "runs" this long on kwok
EVENTS_PER_RUN = 8  # audit events of a three-step Run that succeeds


def latency(bench: Bench, rate: float, seconds: float) -> dict[str, Any]:
    """Runs of three sequential steps applied at a steady rate."""
    namespace = f"bench-{int(rate)}"
    return runs_at(bench, namespace, int(rate * seconds), rate)


def throughput(bench: Bench, runs: int) -> dict[str, Any]:
    """Runs applied all at once: how many Runs and step Jobs per second the whole system
    sustains (between the 10th and 90th percentile of finishes), and the mirror under it."""
    return runs_at(bench, "bench-throughput", runs, rate=None)


def runs_at(bench: Bench, namespace: str, count: int, rate: float | None) -> dict[str, Any]:
    assert bench.api is not None
    bench.kubectl("create", "namespace", namespace)
    bench.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_agent_and_templates()))
    time.sleep(1)  # the operator's indexes learn the Agent and Template
    observer = Observer(bench.api, namespace)
    observer.start()
    time.sleep(0.5)
    custom = client.CustomObjectsApi(bench.api)
    created: dict[str, float] = {}
    usage_before = bench.operator_usage()
    cpu_before = bench.cpu_by_process()
    metrics_before = bench.scrape()
    requests_before = bench.apiserver_requests()
    audit_mark = bench.audit.mark()

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
    while bench.metric("nofx_mirror_events_total") - events_before < count * EVENTS_PER_RUN:
        if time.monotonic() > mirror_deadline:
            break
        time.sleep(0.5)
    mirror_seconds = time.monotonic() - started
    observer.stop()
    usage_after = bench.operator_usage()
    cpu_after = bench.cpu_by_process()
    metrics_after = bench.scrape()
    requests = bench.apiserver_requests().minus(requests_before)
    writes = bench.audit.read_since(audit_mark)

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
                next_job.append(observer.job_added[steps[after]] - observer.job_done[steps[before]])
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
        # Watches of ours the API server ended or dropped: what happened meanwhile was seen late.
        "observer_gaps": observer.gaps,
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
        "cpu_ms_per_run_by_process": cpu_ms_per(cpu_before, cpu_after, count),
        "api_requests_per_run": requests.per_request_kind(count),
        "writes_per_run": writes_per_run(writes, len(observer.run_done), namespace, OPERATOR_USER),
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


def probe(bench: Bench, namespace: str, runs: int, rate: float) -> dict[str, Any]:
    """The cost of reconciling: a few Runs applied slowly, measured from the operator's
    own metrics and CPU time."""
    before, usage_before = bench.scrape(), bench.operator_usage()
    row = runs_at(bench, namespace, runs, rate)
    after, usage_after = bench.scrape(), bench.operator_usage()
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
        # The same Runs each time: unlike reconciles, whose count varies with how many events
        # one reconcile takes up, they divide the same work.
        "operator_cpu_ms_per_run": round(1000 * cpu / runs, 2),
        "apply_to_first_job_ms": row["apply_to_first_job_ms"],
        "operator_rss_mib": usage_after["rss_mib"],
    }


def fill(bench: Bench, runs: int) -> dict[str, Any]:
    """Keeps `runs` Runs in the cluster, each waiting for an approval (no Jobs), and
    measures what holding them costs the operator."""
    assert bench.api is not None
    namespace = "bench-scale"
    bench.kubectl("create", "namespace", namespace)
    bench.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(_agent_and_templates()))
    time.sleep(1)
    custom = client.CustomObjectsApi(bench.api)
    waiting_before = bench.metric("nofx_runs", phase="WaitingApproval")
    usage_before = bench.operator_usage()
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
        lambda: bench.metric("nofx_runs", phase="WaitingApproval") - waiting_before >= runs,
        1800,
        f"{runs} Runs waiting for approval",
        interval=2,
    )
    wait_until(bench.mirror_drained, 1800, "the mirror to store every event", interval=2)
    settled_for = time.monotonic() - started
    usage_settled = bench.operator_usage()
    time.sleep(30)
    usage_idle = bench.operator_usage()
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
