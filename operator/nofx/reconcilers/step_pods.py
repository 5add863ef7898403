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

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from nofx.builders.job import CONTAINER_NAME
from nofx.builders.labels import MANAGED_BY
from nofx.kube import response_json

log = logging.getLogger("nofx.pods")

KEEP_SECONDS = 300.0  # how long a finished Pod's outputs stay after its watch event
WATCH_SECONDS = 300  # the API server ends each watch after this long; it resumes where it was
RETRY_SECONDS = 5.0  # after a failed list or watch, doubled while it keeps failing (RBAC)
MAX_RETRY_SECONDS = 300.0
SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"

JobKey = tuple[str, str]  # (namespace, Job name)


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class StepPods:
    def __init__(self, api: client.ApiClient, namespaces: tuple[str, ...] = ()) -> None:
        # The typed client: its raw responses stream a watch, which Kube.request does not.
        self.core = client.CoreV1Api(api)
        self._lock = threading.Lock()
        # Job → (when seen, the agent container's terminated state), oldest first.
        self._succeeded: OrderedDict[JobKey, tuple[float, dict[str, Any]]] = OrderedDict()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._follow, args=(namespace,), daemon=True, name="pods")
            for namespace in namespaces or ("",)  # "": every namespace
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped.set()

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

    # --- the watch ---

    def _follow(self, namespace: str) -> None:
        delay = RETRY_SECONDS
        while not self._stopped.is_set():
            try:
                version = self._list(namespace)
                delay = RETRY_SECONDS
                while not self._stopped.is_set():
                    version = self._watch(namespace, version)
            except Gone:
                continue
            except Exception as error:  # the watch only saves work: steps LIST meanwhile
                log.warning("the step Pod watch failed; retrying in %.0f s: %s", delay, error)
                self._stopped.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    def _pods(self, namespace: str, **kwargs: Any) -> Any:
        """The raw response of a list or watch of step Pods, in one namespace or all."""
        # Only Pods that succeeded: the API server filters out the half dozen updates a step
        # Pod goes through before (created, bound, running), which this watch would decode.
        kwargs.update(
            label_selector=SELECTOR, field_selector="status.phase=Succeeded", _preload_content=False
        )
        if namespace:
            return self.core.list_namespaced_pod(namespace, **kwargs)
        return self.core.list_pod_for_all_namespaces(**kwargs)

    def _list(self, namespace: str) -> str:
        body = response_json(self._pods(namespace))
        now = time.monotonic()
        for pod in body.get("items") or []:
            self.see(pod, now)
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, namespace: str, version: str) -> str:
        """Follows the watch until the server ends it; returns the last resourceVersion."""
        response = self._pods(
            namespace,
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
        )
        try:
            for line in iter_resp_lines(response):
                if self._stopped.is_set():
                    break
                event = json.loads(line)
                kind, pod = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if pod.get("code") == 410:
                        raise Gone
                    raise RuntimeError(pod.get("message") or "watch error")
                version = pod.get("metadata", {}).get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED"):
                    self.see(pod, time.monotonic())
        finally:
            response.release_conn()
        return version
