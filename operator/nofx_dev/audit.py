"""The API server's audit log of writes: its policy, reading it, and writes counted per Run.

With POLICY the API server logs each write once (at ResponseComplete, metadata only), with the
user, the verb, the object and the response code; reads and lease renewals are not logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WRITE_VERBS = ["create", "update", "patch", "delete", "deletecollection"]

POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        # Node and leader-election heartbeats: constant, whatever the workload.
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "Metadata", "verbs": WRITE_VERBS},
        {"level": "None"},
    ],
}


@dataclass(frozen=True)
class Write:
    """One logged write."""

    user: str
    verb: str
    resource: str  # "jobs", "runs/status"; the request path when no object is named
    namespace: str | None
    code: int

    @property
    def kind(self) -> str:
        """ "create jobs", "patch runs/status"."""
        return f"{self.verb} {self.resource}"

    @property
    def succeeded(self) -> bool:
        return self.code < 400


def parse(lines: Iterable[str]) -> list[Write]:
    """Writes from the JSON lines of an audit log; other lines and other stages are skipped."""
    writes = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("stage") != "ResponseComplete":
            continue
        verb = event.get("verb", "")
        if verb not in WRITE_VERBS:
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource") or event.get("requestURI", "?").split("?", 1)[0]
        if ref.get("subresource"):
            resource += f"/{ref['subresource']}"
        writes.append(
            Write(
                user=(event.get("user") or {}).get("username", "?"),
                verb=verb,
                resource=resource,
                namespace=ref.get("namespace"),
                code=int((event.get("responseStatus") or {}).get("code", 0)),
            )
        )
    return writes


@dataclass
class AuditLog:
    """An audit log file that the API server appends to; read from a mark on."""

    path: Path

    def mark(self) -> int:
        """Where the log ends now: read_since(mark) gives what comes after."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_since(self, mark: int) -> list[Write]:
        """The writes logged after mark, up to the last complete line."""
        with open(self.path, "rb") as log:
            if log.seek(0, 2) < mark:
                raise RuntimeError(f"{self.path} is shorter than at the mark: rotated?")
            log.seek(mark)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        return parse(complete.decode(errors="replace").splitlines())


def writes_per_run(
    writes: Iterable[Write], runs: int, namespace: str, operator: str
) -> dict[str, Any]:
    """Writes to objects in namespace per Run: by user, and by verb and resource for the
    operator (user `operator`) and for the whole system; failed ones (code ≥ 400) apart, by
    code. Writes outside namespace (other scenarios' leftovers, Nodes) are only counted."""
    by_user: dict[str, int] = {}
    failed_by_user: dict[str, int] = {}
    operator_by_kind: dict[str, int] = {}
    operator_failed: dict[str, int] = {}
    system_by_kind: dict[str, int] = {}
    system_failed: dict[str, int] = {}
    elsewhere = 0
    for write in writes:
        if write.namespace != namespace:
            elsewhere += 1
            continue
        if write.succeeded:
            _add(by_user, write.user)
            _add(system_by_kind, write.kind)
            if write.user == operator:
                _add(operator_by_kind, write.kind)
        else:
            failed = f"{write.kind} {write.code}"
            _add(failed_by_user, write.user)
            _add(system_failed, failed)
            if write.user == operator:
                _add(operator_failed, failed)

    def per_run(counts: dict[str, int]) -> dict[str, float]:
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return {k: round(v / runs, 2) for k, v in ordered} if runs else {}

    def total(counts: dict[str, int]) -> float | None:
        return round(sum(counts.values()) / runs, 2) if runs else None

    return {
        "runs": runs,
        "operator_total": total(operator_by_kind),
        "system_total": total(system_by_kind),
        "by_user": per_run(by_user),
        "operator_by_kind": per_run(operator_by_kind),
        "system_by_kind": per_run(system_by_kind),
        "failed": {
            "operator_total": total(operator_failed),
            "system_total": total(system_failed),
            "by_user": per_run(failed_by_user),
            "operator_by_kind": per_run(operator_failed),
            "system_by_kind": per_run(system_failed),
        },
        "outside_namespace": elsewhere,
    }


def _add(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
