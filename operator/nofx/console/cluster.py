"""What the console reads from Kubernetes, and nothing else: Runs a chunk at a time, one Run with
its Jobs and Events, and Agents or Templates. Raw JSON, as the operator reads Jobs (kube.py)."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nofx.api.common import GROUP, VERSION
from nofx.builders.labels import RUN_LABEL, label_value
from nofx.kube import Kube, response_json

EVENTS_SHOWN = 50  # the newest Events of a Run


class ContinueExpired(Exception):
    """The API server forgot the list a continue token pointed into (HTTP 410): start again."""


class Cluster:
    def __init__(self, api: client.ApiClient) -> None:
        self._kube = Kube(api)  # the reads the console shares with the operator
        self.custom, self.batch, self.core = self._kube.custom, self._kube.batch, self._kube.core

    def list_chunk(
        self, plural: str, namespace: str, token: str, limit: int
    ) -> tuple[list[dict[str, Any]], str]:
        """One chunk of Runs, Agents or Templates (of every namespace when namespace is '')
        and the continue token of the next ('' at the end)."""
        options: dict[str, Any] = {"limit": limit, "_preload_content": False}
        if token:
            options["_continue"] = token
        try:
            if namespace:
                response = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, **options
                )
            else:
                response = self.custom.list_cluster_custom_object(GROUP, VERSION, plural, **options)
        except ApiException as error:
            if error.status == 410:
                raise ContinueExpired(str(error.reason)) from error
            raise
        body = response_json(response)
        return body["items"], body["metadata"].get("continue") or ""

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._kube.get(plural, namespace, name)

    def run_jobs(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """The Jobs of this Run: by label, then by owner (an older Run of its name had others)."""
        metadata = run["metadata"]
        response = self.batch.list_namespaced_job(
            metadata["namespace"],
            label_selector=f"{RUN_LABEL}={label_value(metadata['name'])}",
            _preload_content=False,
        )
        jobs: list[dict[str, Any]] = response_json(response)["items"]
        return [job for job in jobs if _owned_by(job, metadata["uid"])]

    def run_events(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """The Run's Events, newest first."""
        metadata = run["metadata"]
        response = self.core.list_namespaced_event(
            metadata["namespace"],
            field_selector=f"involvedObject.uid={metadata['uid']}",
            _preload_content=False,
        )
        events: list[dict[str, Any]] = response_json(response)["items"]
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
