"""The Run a Schedule starts: owned by the Schedule (deleted with it), labelled with its name,
annotated with its scheduled time. spec.account is left out: the operator pins the namespace's."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nofx.api.common import API_VERSION
from nofx.api.schedule import SCHEDULE_LABEL, ScheduledRun
from nofx.builders.labels import MANAGED_BY

SCHEDULED_AT = "nofx.dev/scheduled-at"


def build_scheduled_run(
    schedule: dict[str, Any], run: ScheduledRun, name: str, scheduled_at: datetime
) -> dict[str, Any]:
    metadata = schedule["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "Run",
        "metadata": {
            "name": name,
            "namespace": metadata["namespace"],
            "labels": {SCHEDULE_LABEL: metadata["name"], **MANAGED_BY},
            "annotations": {SCHEDULED_AT: scheduled_at.isoformat()},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "Schedule",
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": run.to_dict(),
    }


def scheduled_time(body: Any) -> datetime | None:
    text = (body.get("metadata", {}).get("annotations") or {}).get(SCHEDULED_AT)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None
