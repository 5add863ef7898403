"""What the mirror reads of a Run's body: its outbox entries, the rows they become, and where
to report on it. Pure functions over plain data."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from nofx.mirror import outbox
from nofx.mirror.records import AuditEvent, RunRecord, UsageRecord
from nofx.mirror.report import Target

RunKey = tuple[str, str]  # namespace, name
RunRows = tuple[list[AuditEvent], list[UsageRecord], RunRecord]
RUN_METADATA = (
    "namespace", "name", "uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"
)  # fmt: skip
RUN_STATUS = ("phase", "startedAt", "finishedAt", "account", "audit")


def mirrored_part(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the mirror reads of a Run: with thousands of Runs queued while Postgres is slow or
    down, holding their whole bodies (pinned specs, every step) would cost hundreds of MB."""
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
    return {
        "metadata": {key: metadata.get(key) for key in RUN_METADATA},
        "spec": {key: spec[key] for key in ("templateRef", "account") if key in spec},
        "status": {key: status[key] for key in RUN_STATUS if key in status},
    }


def run_record(body: dict[str, Any]) -> RunRecord:
    metadata, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None

    return RunRecord(
        uid=metadata["uid"],
        namespace=metadata["namespace"],
        name=metadata["name"],
        template=(spec.get("templateRef") or {}).get("name"),
        account=outbox.account_of(body),
        phase=status.get("phase"),
        created_at=when(metadata.get("creationTimestamp")),
        started_at=when(status.get("startedAt")),
        finished_at=when(status.get("finishedAt")),
    )


def pending(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = ((body.get("status") or {}).get("audit") or {}).get(
        "pending"
    ) or []
    return entries


def run_rows(body: dict[str, Any]) -> RunRows:
    events, usage = outbox.to_records(body, pending(body))
    return events, usage, run_record(body)


def run_target(body: Mapping[str, Any]) -> Target:
    metadata = body["metadata"]
    return Target("Run", metadata["namespace"], metadata["name"], metadata["uid"])


def entry_time(entry: dict[str, Any]) -> datetime | None:
    """When an outbox entry happened: an event's time, a usage record's finish (or start)."""
    value = entry.get("at") or entry.get("finishedAt") or entry.get("startedAt")
    try:
        at = datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # malformed: its write is refused and reported
    return at if at.tzinfo else at.replace(tzinfo=UTC)
