"""What the console reads from Kubernetes, and nothing else: Runs a chunk at a time, one Run with
its Jobs and Events, and Agents or Templates. Plain JSON, through the operator's Kube.request."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nofx.api.common import GROUP, VERSION
from nofx.builders.labels import RUN_LABEL, label_value
from nofx.kube import Kube

EVENTS_SHOWN = 50  # the newest Events of a Run


class ContinueExpired(Exception):
    """The API server forgot the list a continue token pointed into (HTTP 410): start again."""


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self._kube = Kube(api)  # the reads the console shares with the operator

    def list_chunk(
        self, plural: str, namespace: str, token: str, limit: int
    ) -> tuple[list[dict[str, Any]], str]:
        """One chunk of Runs, Agents or Templates (of every namespace when namespace is '')
        and the continue token of the next ('' at the end)."""
        query = {"limit": str(limit)}
        if token:
            query["continue"] = token
        where = f"namespaces/{namespace}/" if namespace else ""
        path = f"/apis/{GROUP}/{VERSION}/{where}{plural}"
        try:
            body = self._kube.request("GET", path, query=query)
        except ApiException as error:
            if error.status == 410:
                raise ContinueExpired(str(error.reason)) from error
            raise
        return body["items"], body["metadata"].get("continue") or ""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._kube.get(plural, namespace, name)

    def run_jobs(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """The Jobs of this Run: by label, then by owner (an older Run of its name had others)."""
        metadata = run["metadata"]
        selector = f"{RUN_LABEL}={label_value(metadata['name'])}"
        listed = self._kube.request(
            "GET", f"/apis/batch/v1/namespaces/{metadata['namespace']}/jobs",
            query={"labelSelector": selector},
        )  # fmt: skip
        jobs: list[dict[str, Any]] = listed["items"]
        return [job for job in jobs if _owned_by(job, metadata["uid"])]

    def run_events(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """The Run's Events, newest first."""
        metadata = run["metadata"]
        listed = self._kube.request(
            "GET", f"/api/v1/namespaces/{metadata['namespace']}/events",
            query={"fieldSelector": f"involvedObject.uid={metadata['uid']}"},
        )  # fmt: skip
        events: list[dict[str, Any]] = listed["items"]
        events.sort(key=_event_time, reverse=True)
        return events[:EVENTS_SHOWN]


def _owned_by(job: dict[str, Any], uid: str) -> bool:
    return any(owner.get("uid") == uid for owner in job["metadata"].get("ownerReferences") or [])


def _event_time(event: dict[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or event["metadata"].get("creationTimestamp")
        or ""
    )
