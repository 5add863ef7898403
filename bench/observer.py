"""The benchmark's own watches of the cluster, with this process's clock: when each Job
appeared and finished, when each Run succeeded, and the stages of each Job's Pod (`Observer`,
whose `stage_breakdown` says where a step's time goes). The watches are the operator's own
loop (nofx.watching): plain JSON, so that this client costs less CPU than the operator it
measures, and a watch the API server ends or drops is listed again rather than lost.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from measure import percentiles

from nofx.apiserver import ApiServer
from nofx.watching import Watch


class Each:
    """What a watch tells, as calls of `see` with every object listed, added or modified."""

    def __init__(self, see: Callable[[dict[str, Any]], None]) -> None:
        self.see = see

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            self.see(obj)

    def changed(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            self.see(obj)


def watch_each(api: client.ApiClient, path: str, see: Callable[[dict[str, Any]], None]) -> Watch:
    """Starts a watch of every object under `path` (a list URL), each handed to `see`."""
    watch = Watch(ApiServer(api), path, {}, Each(see), f"bench {path}")
    watch.start()
    return watch


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
    watches: list[Watch] = field(default_factory=list)

    def start(self) -> None:
        ns = self.namespace
        self.watches = [
            watch_each(self.api, f"/apis/batch/v1/namespaces/{ns}/jobs", self._job),
            watch_each(self.api, f"/apis/nofx.dev/v1alpha1/namespaces/{ns}/runs", self._run),
            watch_each(self.api, f"/api/v1/namespaces/{ns}/pods", self._pod),
        ]

    def stop(self) -> None:
        for w in self.watches:
            w.stop()

    @property
    def gaps(self) -> int:
        """Watches the API server ended or dropped that had to list again: what happened
        meanwhile is seen late, at the new list."""
        return sum(max(0, w.lists - 1) for w in self.watches)

    def _job(self, job: dict[str, Any]) -> None:
        now = time.monotonic()
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

    def _pod(self, pod: dict[str, Any]) -> None:
        now = time.monotonic()
        job = (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")
        if not job:
            return
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

    def _run(self, body: dict[str, Any]) -> None:
        if (body.get("status") or {}).get("phase") == "Succeeded":
            self.run_done.setdefault(body["metadata"]["name"], time.monotonic())
