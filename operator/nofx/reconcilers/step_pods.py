"""Step Pods that finished well, as a watch of our own sees them: a step whose Job succeeded
reads its outputs (the agent container's termination message) from here instead of listing
the Job's Pods, a LIST the API server answers by scanning every Pod of the namespace.

The watch decodes each event's JSON and nothing more (no client models, no Kopf handler), and
keeps only the terminated state of the agent container of Pods that succeeded, for a few
minutes: long enough for the Job controller to mark the Job complete and the Run to read it.
A Pod it does not know (the watch was down, or the Run is read much later) is listed as before,
so the watch only ever saves work; a container that terminated never changes again, so what
it holds is never stale.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

from nofx.apiserver import ApiServer
from nofx.builders.job import CONTAINER_NAME
from nofx.builders.labels import MANAGED_BY
from nofx.watching import Watch, Watching

KEEP_SECONDS = 300.0  # how long a finished Pod's outputs stay after its watch event
SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

JobKey = tuple[str, str]  # (namespace, Job name)


class StepPods(Watching):
    def __init__(self, server: ApiServer, namespaces: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        # Job → (when seen, the agent container's terminated state), oldest first.
        self._succeeded: OrderedDict[JobKey, tuple[float, dict[str, Any]]] = OrderedDict()
        # Only Pods that succeeded: the API server filters out the half dozen updates a step
        # Pod goes through before (created, bound, running), which this watch would decode.
        query = {"labelSelector": SELECTOR, "fieldSelector": "status.phase=Succeeded"}
        self.watches = [
            Watch(server, _pods_path(namespace), query, self, "step Pod", namespace)
            for namespace in namespaces or ("",)  # "": every namespace
        ]

    def succeeded(self, namespace: str, job_name: str) -> dict[str, Any] | None:
        """The Job's Pod that succeeded, shaped as the API server returns a Pod (only its agent
        container's status), if the watch saw it."""
        with self._lock:
            seen = self._succeeded.get((namespace, job_name))
        if seen is None:
            return None
        container = {"name": CONTAINER_NAME, "state": {"terminated": seen[1]}}
        return {"status": {"phase": "Succeeded", "containerStatuses": [container]}}

    def see(self, pod: dict[str, Any], now: float) -> None:
        """Keeps the agent container's terminated state of a Pod that succeeded; forgets what
        was kept longer than KEEP_SECONDS."""
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        job = (metadata.get("labels") or {}).get(JOB_NAME_LABEL)
        terminated = next(
            (
                (container.get("state") or {}).get("terminated")
                for container in status.get("containerStatuses") or []
                if container.get("name") == CONTAINER_NAME
            ),
            None,
        )
        with self._lock:
            if job and terminated and status.get("phase") == "Succeeded":
                key = (metadata["namespace"], job)
                self._succeeded[key] = (now, terminated)
                self._succeeded.move_to_end(key)
            while self._succeeded and now - next(iter(self._succeeded.values()))[0] >= KEEP_SECONDS:
                self._succeeded.popitem(last=False)

    def held(self) -> int:
        with self._lock:
            return len(self._succeeded)

    # --- what the watch tells (Followed) ---

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        for pod in objects:
            self.see(pod, now)

    def changed(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            self.see(obj, time.monotonic())


def _pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
