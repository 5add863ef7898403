"""Ownership between a Run and what it creates (Jobs, child Runs): garbage collection deletes
them with their Run, and their events lead back to it."""

from __future__ import annotations

from typing import Any

from nofx.api.common import API_VERSION, GROUP


def owner_reference(run_name: str, run_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Run",
        "name": run_name,
        "uid": run_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owning_run(body: Any) -> str | None:
    """Name of the Run that owns a Job or a child Run (labels may hold a hash of it)."""
    for owner in body.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == "Run" and owner.get("apiVersion", "").startswith(f"{GROUP}/"):
            return str(owner["name"])
    return None
