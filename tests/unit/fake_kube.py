"""An in-memory stand-in for nofx.kube.Kube: the same methods with the same contracts (gone →
None, already exists → False, stale resourceVersion → Conflict, refused → Rejected), objects kept
as plain dicts, every call recorded. Tests put Jobs, Pods and FailedCreate events in place the way
the Job controller and the kubelet would, and can make the next calls of a method fail."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from nofx.api_errors import Conflict, Rejected
from nofx.own_writes import OwnWrites


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, None deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


class FakeKube:
    def __init__(self) -> None:
        self.own_writes = OwnWrites()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (plural, ns, name)
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, job name) → its Pod
        self.create_errors: dict[tuple[str, str], str] = {}  # (ns, job name) → FailedCreate
        self.namespaces: dict[str, dict[str, str]] = {}  # name → labels; unknown: none
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._failures: dict[str, list[BaseException]] = defaultdict(list)
        self._max_status: tuple[int, int] | None = None  # (bytes, HTTP status of the refusal)
        self._version = 100

    # --- what tests set up and look at ---

    def fail_next(self, method: str, times: int, error: BaseException) -> None:
        """The next `times` calls of `method` raise `error` (and change nothing)."""
        self._failures[method] += [error] * times

    def refuse_status_over(self, size: int, http_status: int = 422) -> None:
        """patch_status raises Rejected when the resulting status is larger than `size` bytes."""
        self._max_status = (size, http_status)

    def put(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        """Stores an object as the API server would, without recording a call."""
        stored = copy.deepcopy(body)
        metadata = stored.setdefault("metadata", {})
        metadata.setdefault("uid", f"uid-{metadata['name']}")
        metadata.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        metadata.setdefault("generation", 1)
        metadata["resourceVersion"] = self._bump()
        self.objects[(plural, metadata["namespace"], metadata["name"])] = stored
        return copy.deepcopy(stored)

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]

    def status_size(self, namespace: str, name: str) -> int:
        return len(json.dumps(self.objects[("runs", namespace, name)].get("status") or {}))

    # --- nofx.kube.Kube ---

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get", plural, namespace, name)
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found else None

    def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        self._call("patch_status", plural, namespace, name, copy.deepcopy(status), resource_version)
        stored = self._current(plural, namespace, name, resource_version)
        if stored is None:
            return None
        merged = merge_patch(stored.get("status") or {}, status)
        if self._max_status and len(json.dumps(merged)) > self._max_status[0]:
            size, code = self._max_status
            raise Rejected(code, f"Run.nofx.dev {name!r} is invalid: status: too large (> {size})")
        stored["status"] = merged
        return self._written(stored)

    def set_finalizers(
        self, plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any] | None:
        self._call("set_finalizers", plural, namespace, name, list(finalizers), resource_version)
        stored = self._current(plural, namespace, name, resource_version)
        if stored is None:
            return None
        stored["metadata"]["finalizers"] = list(finalizers)
        return self._written(stored)

    def create(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        self._call("create", plural, namespace, copy.deepcopy(body))
        if (plural, namespace, body["metadata"]["name"]) in self.objects:
            return False
        self.put(plural, {**body, "metadata": {**body["metadata"], "namespace": namespace}})
        return True

    def patch_spec(self, plural: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        self._call("patch_spec", plural, namespace, name, copy.deepcopy(spec))
        stored = self.objects.get((plural, namespace, name))
        if stored is not None:
            stored["spec"] = merge_patch(stored.get("spec") or {}, spec)
            self._written(stored)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        self._call("delete", plural, namespace, name)
        self.objects.pop((plural, namespace, name), None)

    def create_job(self, body: dict[str, Any]) -> bool:
        self._call("create_job", copy.deepcopy(body))
        if ("jobs", body["metadata"]["namespace"], body["metadata"]["name"]) in self.objects:
            return False
        self.put("jobs", body)
        return True

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get_job", namespace, name)
        found = self.objects.get(("jobs", namespace, name))
        return copy.deepcopy(found) if found else None

    def delete_job(self, namespace: str, name: str) -> None:
        self._call("delete_job", namespace, name)
        self.objects.pop(("jobs", namespace, name), None)
        self.pods.pop((namespace, name), None)

    def job_pod(self, namespace: str, job_name: str) -> dict[str, Any] | None:
        self._call("job_pod", namespace, job_name)
        found = self.pods.get((namespace, job_name))
        return copy.deepcopy(found) if found else None

    def namespace_labels(self, name: str) -> dict[str, str]:
        self._call("namespace_labels", name)
        return dict(self.namespaces.get(name, {}))

    def pod_create_error(self, namespace: str, job_name: str) -> str | None:
        self._call("pod_create_error", namespace, job_name)
        return self.create_errors.get((namespace, job_name))

    # --- inside ---

    def create_event(
        self, involved: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        self._call("create_event", involved["name"], reason)

    def _call(self, method: str, *args: Any) -> None:
        self.calls.append((method, args))
        if self._failures[method]:
            raise self._failures[method].pop(0)

    def _current(
        self, plural: str, namespace: str, name: str, resource_version: str | None
    ) -> dict[str, Any] | None:
        stored = self.objects.get((plural, namespace, name))
        if (
            stored
            and resource_version
            and stored["metadata"]["resourceVersion"] != resource_version
        ):
            raise Conflict(f"{plural}/{name} changed")
        return stored

    def _written(self, stored: dict[str, Any]) -> dict[str, Any]:
        stored["metadata"]["resourceVersion"] = self._bump()
        return copy.deepcopy(stored)

    def touched(self, stored: dict[str, Any]) -> None:
        """A stored object a test changed in place gets a new resourceVersion, as any write."""
        stored["metadata"]["resourceVersion"] = self._bump()

    def _bump(self) -> str:
        self._version += 1
        return str(self._version)
