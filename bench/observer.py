"""The benchmark's own watches of the cluster, with this process's clock: when each Job
appeared and finished, when each Run succeeded, and the stages of each Job's Pod (`Observer`,
whose `stage_breakdown` says where a step's time goes). `RawWatch` hands out the objects as
plain JSON, so that this client costs less CPU than the operator it measures.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from measure import percentiles


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
