"""A Kueue Workload read back as what the planner needs to know of the step Job it stands for:
admitted or not, and Kueue's own reason and message while it is not."""

from __future__ import annotations

from typing import Any

from nofx.builders.job_status import parse_time
from nofx.planner.facts import Admission


def workload_job(body: dict[str, Any]) -> str | None:
    """The name of the Job a Workload was made for (its owner)."""
    for owner in body["metadata"].get("ownerReferences") or []:
        if owner.get("kind") == "Job" and str(owner.get("apiVersion", "")).startswith("batch/"):
            return str(owner["name"])
    return None


def observe_workload(body: dict[str, Any]) -> Admission:
    status = body.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("type")}

    def true(kind: str) -> bool:
        return conditions.get(kind, {}).get("status") == "True"

    cluster_queue = (status.get("admission") or {}).get("clusterQueue")
    if true("Admitted"):
        since = conditions["Admitted"].get("lastTransitionTime")
        return Admission(admitted=True, cluster_queue=cluster_queue, admitted_at=parse_time(since))
    why: dict[str, Any] = {}
    if true("Evicted"):
        why = conditions["Evicted"]
    elif "QuotaReserved" in conditions and not true("QuotaReserved"):
        why = conditions["QuotaReserved"]
    elif true("QuotaReserved"):
        why = {
            "reason": "AdmissionChecks",
            "message": "quota reserved; waiting for admission checks",
        }
    return Admission(
        admitted=False,
        reason=why.get("reason"),
        message=why.get("message"),
        evicted=true("Evicted"),
        cluster_queue=cluster_queue,
    )
