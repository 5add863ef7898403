"""Status of Agents and Templates: a Ready condition plus a few fields, written only when it
changes (an unchanged status costs no API call)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nofx.kube import Kube


def apply(
    kube: Kube,
    plural: str,
    body: dict[str, Any],
    *,
    ready: bool,
    reason: str,
    message: str,
    extra: dict[str, Any] | None = None,
) -> None:
    metadata = body["metadata"]
    old = body.get("status") or {}
    value = "True" if ready else "False"
    previous = next((c for c in old.get("conditions") or [] if c.get("type") == "Ready"), None)
    unchanged = (
        previous is not None
        and previous.get("status") == value
        and previous.get("reason") == reason
        and previous.get("message") == message
    )
    condition = previous if unchanged else None
    if condition is None:
        since = (
            previous["lastTransitionTime"]
            if previous and previous.get("status") == value
            else datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        )
        condition = {
            "type": "Ready",
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
            "observedGeneration": metadata.get("generation"),
        }
    status = {
        **old,
        **(extra or {}),
        # Other conditions (the mirror's Mirrored) are not this reconciler's to drop.
        "conditions": [
            *(c for c in old.get("conditions") or [] if c.get("type") != "Ready"),
            condition,
        ],
        "observedGeneration": metadata.get("generation"),
    }
    if status != old:
        kube.patch_status(plural, metadata["namespace"], metadata["name"], status)
