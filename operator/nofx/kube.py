"""Kubernetes I/O for the reconcilers: the operations they use (custom resources, Jobs, Pods,
Events), with the outcomes they care about (already exists, already gone, conflict) turned
into plain return values. The requests themselves are apiserver.py's."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from nofx.api.common import GROUP, VERSION
from nofx.api_errors import Conflict, rejected
from nofx.apiserver import ApiServer
from nofx.own_writes import OwnWrites

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
BACKGROUND = {"propagationPolicy": "Background"}  # deletes go on with dependents in the background


class Kube(ApiServer):
    """The operations the reconcilers use, over the API server's plain-JSON requests."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(api)
        self.own_writes = OwnWrites()

    # --- custom resources ---

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", _path(plural, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Replaces status with a merge patch; with resource_version, only if nobody wrote the
        object since (else Conflict). Returns the object as stored, None if it is gone."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return self._patch(_path(plural, namespace, name) + "/status", plural, name, body)

    def set_condition(
        self,
        plural: str,
        namespace: str,
        name: str,
        kind: str,
        value: str,
        reason: str,
        message: str,
    ) -> None:
        """Sets one condition of the object's status, keeping the others (a merge patch
        replaces the whole list, so only if nobody wrote the object since it was read)."""
        for _ in range(5):
            body = self.get(plural, namespace, name)
            if body is None:
                return
            conditions = (body.get("status") or {}).get("conditions") or []
            previous = next((c for c in conditions if c.get("type") == kind), None) or {}
            wanted = {"status": value, "reason": reason, "message": message}
            if all(previous.get(field) == wanted[field] for field in wanted):
                return
            condition = {
                "type": kind,
                **wanted,
                "lastTransitionTime": previous["lastTransitionTime"]
                if previous.get("status") == value
                else _now(),
                "observedGeneration": body["metadata"].get("generation"),
            }
            others = [c for c in conditions if c.get("type") != kind]
            status = {"conditions": sorted([*others, condition], key=lambda c: c["type"])}
            try:
                self.patch_status(
                    plural, namespace, name, status, body["metadata"]["resourceVersion"]
                )
                return
            except Conflict:
                continue
        raise Conflict(f"{plural}/{name} kept changing; condition {kind} not set")

    def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any] | None:
        """Replaces metadata.finalizers, unless the object changed since it was read."""
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
        return self._patch(_path(plural, namespace, name), plural, name, body)

    def _patch(
        self, path: str, plural: str, name: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """A merge patch: the object as stored, None if it is gone, Conflict if a
        resourceVersion precondition in the body failed."""
        try:
            result: dict[str, Any] = self.request("PATCH", path, body, content_type=MERGE_PATCH)
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status == 409:
                raise Conflict(f"{plural}/{name} changed") from error
            raise rejected(error) or error from error
        return result

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        """Creates the object; False if one of that name already exists, Rejected if the API
        server refuses it."""
        try:
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
            self.request("POST", path, body, answer=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise rejected(error) or error from error
        return True

    def patch_spec(self, plural: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        try:
            self.request(
                "PATCH",
                _path(plural, namespace, name),
                {"spec": spec},
                content_type=MERGE_PATCH,
                answer=False,
            )
        except ApiException as error:
            if error.status != 404:
                raise

    def replace_spec(self, plural: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Replaces the whole spec (fields missing from it go away), unless the object changed
        since it was read (Conflict)."""
        body = self.get(plural, namespace, name)
        if body is None:
            raise LookupError(f"{plural}/{name} not found")
        body["spec"] = spec
        try:
            self.request("PUT", _path(plural, namespace, name), body, answer=False)
        except ApiException as error:
            if error.status == 409:
                raise Conflict(f"{plural}/{name} changed") from error
            raise

    def delete(self, plural: str, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", _path(plural, namespace, name), query=BACKGROUND, answer=False)
        except ApiException as error:
            if error.status != 404:
                raise

    # --- Events ---

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event about the object (for writers without Kopf's context)."""
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{involved['name']}.",
                "namespace": involved["namespace"],
            },
            "involvedObject": involved,
            "type": event_type,
            "reason": reason,
            "message": message,
            "source": {"component": "nofx-operator"},
            "reportingComponent": "nofx-operator",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self.request(
            "POST", f"/api/v1/namespaces/{involved['namespace']}/events", body, answer=False
        )

    # --- Jobs and Pods ---

    def create_job(self, body: dict[str, Any]) -> bool:
        """Creates the Job; False if it already exists (a retried or repeated decision),
        Rejected if the API server refuses it."""
        try:
            namespace = body["metadata"]["namespace"]
            self.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body, answer=False)
        except ApiException as error:
            if error.status == 409:
                return False
            raise rejected(error) or error from error
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.request("GET", _job_path(namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.request("DELETE", _job_path(namespace, name), query=BACKGROUND, answer=False)
        except ApiException as error:
            if error.status != 404:
                raise

    def whoami(self) -> str:
        """The user the API server authenticates this client as (`kubectl auth whoami`)."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        answer = self.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review)
        return str(answer["status"]["userInfo"]["username"])

    def namespace_labels(self, name: str) -> dict[str, str]:
        """A namespace's labels ({} once it is gone: its Runs go with it)."""
        try:
            namespace = self.request("GET", f"/api/v1/namespaces/{name}")
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
        labels: dict[str, str] = namespace["metadata"].get("labels") or {}
        return labels

    def list_config_maps(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The ConfigMaps of a namespace that match the label selector."""
        path = f"/api/v1/namespaces/{namespace}/configmaps"
        listed = self.request("GET", path, query={"labelSelector": label_selector})
        items: list[dict[str, Any]] = listed["items"]
        return items

    def pod_create_error(self, namespace: str, job_name: str) -> str | None:
        """Why the Job controller could not create the Job's Pod, from its latest FailedCreate
        Event (e.g. a missing ServiceAccount, a quota, an admission policy)."""
        selector = f"involvedObject.kind=Job,involvedObject.name={job_name},reason=FailedCreate"
        listed = self.request(
            "GET", f"/api/v1/namespaces/{namespace}/events", query={"fieldSelector": selector}
        )
        events: list[dict[str, Any]] = listed["items"]
        if not events:
            return None
        latest = max(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return str(latest.get("message") or "FailedCreate")

    def job_pod(self, namespace: str, job_name: str) -> dict[str, Any] | None:
        """The Pod of a finished Job: backoffLimit 0 lets only one run to its end, but a Pod
        stopped by a Kueue eviction may still be going away: the newest not being deleted."""
        path = f"/api/v1/namespaces/{namespace}/pods"
        listed = self.request("GET", path, query={"labelSelector": f"job-name={job_name}"})
        pods: list[dict[str, Any]] = listed["items"]
        pods.sort(
            key=lambda pod: (
                "deletionTimestamp" not in pod["metadata"],
                pod["metadata"].get("creationTimestamp", ""),
            )
        )
        return pods[-1] if pods else None


def _path(plural: str, namespace: str, name: str) -> str:
    """The URL path of one of NOFX's own objects."""
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}"


def _job_path(namespace: str, name: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
