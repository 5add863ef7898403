"""The limit scenarios: what this control plane takes with no operator involved, the ceiling
the operator's figures are read against. `limit`: Jobs created and patched by a tight client
of our own; `lifecycle_limit`: step Jobs run to completion; `chained_limit`: Jobs in chains
shaped like the Runs', each next Job created as soon as the previous one completes. Each takes
the started `Bench` first.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client
from measure import cpu_ms_per, sustained_rate
from observer import Observer, watch_each
from scenarios import STEP_SECONDS
from system import OPERATOR_USER, Bench

from nofx_dev.audit import writes_per_run
from nofx_dev.kwok import played_job


def limit(bench: Bench, jobs: int, workers: int = 16) -> dict[str, Any]:
    """The most this API server takes here: a tight client of our own creates Jobs and
    patches their status, as the operator and the Job controller would."""
    assert bench.api is not None
    namespace = "bench-limit"
    bench.kubectl("create", "namespace", namespace)
    batch = client.BatchV1Api(bench.api)

    def one(index: int) -> None:
        name = f"limit-{index}"
        batch.create_namespaced_job(namespace, _job(name, "1h"))
        batch.patch_namespaced_job_status(name, namespace, {"status": {"active": 1}})

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(jobs)))
    seconds = time.monotonic() - started
    bench.kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "jobs_per_second": round(jobs / seconds, 1),
        "api_writes_per_second": round(2 * jobs / seconds, 1),
    }


def lifecycle_limit(bench: Bench, jobs: int, workers: int = 16) -> dict[str, Any]:
    """The most step Jobs this control plane runs to completion per second: a tight
    client creates Jobs with the benchmark's Pod lifetime, with no operator involved."""
    assert bench.api is not None
    namespace = "bench-lifecycle"
    bench.kubectl("create", "namespace", namespace)
    observer = Observer(bench.api, namespace)
    observer.start()
    time.sleep(0.5)
    batch = client.BatchV1Api(bench.api)
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
    bench.kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "jobs": jobs,
        "completed": len(observer.job_done),
        "observer_gaps": observer.gaps,
        "seconds": round(time.monotonic() - started, 2),
        "jobs_per_second": rate,
        "step_stages_ms": stages,
    }


def chained_limit(bench: Bench, chains: int, length: int = 3) -> dict[str, Any]:
    """Step Jobs per second with the Runs' shape but no operator: `chains` chains of
    `length` Jobs at once, our own client creating each chain's next Job as soon as its
    watch sees the previous one complete. An operator that cost nothing would reach it."""
    assert bench.api is not None
    namespace = "bench-chains"
    bench.kubectl("create", "namespace", namespace)
    batch = client.BatchV1Api(bench.api)
    done: dict[str, float] = {}
    pool = ThreadPoolExecutor(16)

    def create(chain: int, step: int) -> None:
        batch.create_namespaced_job(namespace, _job(f"c{chain}-{step}", STEP_SECONDS))

    all_done = threading.Event()

    def see(job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        conditions = (job.get("status") or {}).get("conditions") or []
        if name in done or not any(
            c["type"] == "Complete" and c["status"] == "True" for c in conditions
        ):
            return
        done[name] = time.monotonic()
        chain, step = (int(part) for part in name[1:].split("-"))
        if step + 1 < length:
            pool.submit(create, chain, step + 1)
        if len(done) == chains * length:
            all_done.set()

    watch = watch_each(bench.api, f"/apis/batch/v1/namespaces/{namespace}/jobs", see)
    time.sleep(0.5)
    cpu_before, audit_mark = bench.cpu_by_process(), bench.audit.mark()
    started = time.monotonic()
    for chain in range(chains):
        pool.submit(create, chain, 0)
    all_done.wait(timeout=600)
    seconds = time.monotonic() - started
    cpu_after = bench.cpu_by_process()
    watch.stop()
    pool.shutdown(wait=False, cancel_futures=True)
    writes = writes_per_run(bench.audit.read_since(audit_mark), chains, namespace, OPERATOR_USER)
    bench.kubectl("delete", "namespace", namespace, "--wait=false")
    return {
        "chains": chains,
        "jobs": chains * length,
        "completed": len(done),
        "seconds": round(seconds, 2),
        "jobs_per_second": sustained_rate(list(done.values())),
        # What the Jobs of a Run cost by themselves: the Runs' figures less these are NOFX's.
        "cpu_ms_per_chain_by_process": {
            name: ms
            for name, ms in cpu_ms_per(cpu_before, cpu_after, chains).items()
            if name != "operator"  # idle meanwhile: the chains' Jobs are not a Run's
        },
        "writes_per_chain": writes["system_total"],
        "writes_per_chain_by_user": writes["by_user"],
    }


def _job(name: str, duration: str) -> dict[str, Any]:
    return played_job(name, {"kwok.nofx.dev/duration": duration})
