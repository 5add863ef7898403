"""The in-toto Statement (v1) of one finished Run, as plain data from plain data: what was pinned
(Template and Agent spec hashes, images, parameters), every step and attempt, the approvals with
their authenticated approvers, the usage, and the Run's audit rows by digest with the result of
verifying their chain. Tekton Chains signs a Statement per TaskRun the same way; this one also
binds the hash-chained trail and who approved."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://nofx.dev/evidence/run/v1"


def canonical_json(value: Any) -> bytes:
    """The bytes every digest here is taken of: sorted keys, compact, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_statement(
    run: Mapping[str, Any],
    audit_file: bytes,
    audit_rows: Sequence[Mapping[str, Any]],
    usage_rows: Sequence[Mapping[str, Any]],
    verification: Sequence[str],
) -> dict[str, Any]:
    """run: the Run as the API server returns it; audit_file: the bytes of its audit rows as the
    bundle stores them (the subject); verification: what checking its stream found."""
    metadata, spec = run["metadata"], run.get("spec") or {}
    status = run.get("status") or {}
    pinned = status.get("pinned") or {}
    head = audit_rows[-1] if audit_rows else None
    predicate = {
        "run": {
            "namespace": metadata["namespace"],
            "name": metadata["name"],
            "uid": metadata["uid"],
            "createdBy": (metadata.get("annotations") or {}).get("nofx.dev/created-by"),
            "account": status.get("account"),
            "phase": status.get("phase"),
            "message": status.get("message"),
            "startedAt": status.get("startedAt"),
            "finishedAt": status.get("finishedAt"),
        },
        "template": _template(pinned),
        "agents": _agents(pinned),
        "parameters": _parameters(pinned),
        "steps": [_step(entry, usage_rows) for entry in status.get("steps") or []],
        "approvals": _approvals(spec, audit_rows),
        "usage": status.get("usage"),
        "auditTrail": {
            "stream": head["stream"] if head else None,
            "rows": len(audit_rows),
            "head": {"seq": head["seq"], "hash": head["hash"]} if head else None,
            "verification": list(verification),
        },
    }
    return {
        "_type": STATEMENT_TYPE,
        "subject": [
            {
                "name": f"runs.nofx.dev/{metadata['namespace']}/{metadata['name']}/audit.json",
                "digest": {"sha256": sha256(audit_file)},
            }
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def _template(pinned: Mapping[str, Any]) -> dict[str, Any] | None:
    template = pinned.get("template")
    if not template:
        return None
    return {"name": template.get("name"), "specHash": template["specHash"]}


def _agents(pinned: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "specHash": agent["specHash"], "image": agent["spec"].get("image")}
        for name, agent in sorted((pinned.get("agents") or {}).items())
    ]


def _parameters(pinned: Mapping[str, Any]) -> dict[str, Any]:
    """Each value's digest; the value itself only where the plan did not mark it secret."""
    declared = ((pinned.get("template") or {}).get("spec") or {}).get("parameters") or []
    secret = {p["name"] for p in declared if p.get("secret")}
    out = {}
    for name, value in sorted((pinned.get("parameters") or {}).items()):
        entry: dict[str, Any] = {"sha256": sha256(canonical_json(value))}
        if name not in secret:
            entry["value"] = value
        out[name] = entry
    return out


def _step(entry: Mapping[str, Any], usage_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    index = entry.get("index")
    attempts = [
        {
            "attempt": row["attempt"],
            "job": row["job_name"],
            "agent": row["agent"],
            "outcome": row.get("outcome"),
            "startedAt": row.get("started_at"),
            "finishedAt": row.get("finished_at"),
            "wallSeconds": row.get("wall_seconds"),
            "cost": str(row["cost"]),
            "currency": row["currency"],
            # The tokens' cost on top of the wall time's (migration 0004; 0 without tokens).
            **({"tokenCost": str(row["token_cost"])} if row.get("token_cost") else {}),
            # Kueue: its queue and the wait for admission, not billed (migration 0006).
            **(
                {"queue": row["queue"], "queuedSeconds": row.get("queued_seconds")}
                if row.get("queue")
                else {}
            ),
        }
        for row in usage_rows
        if row["step"] == entry["name"] and row.get("item_index") == index
    ]
    step = {
        key: entry.get(key)
        for key in ("name", "index", "phase", "reason", "message", "startedAt", "finishedAt")
        if entry.get(key) is not None
    }
    step["attempts"] = sorted(attempts, key=lambda a: a["attempt"])
    if entry.get("childRunName"):
        step["childRun"] = entry["childRunName"]
    return step


def _approvals(
    spec: Mapping[str, Any], audit_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Each approval with the actor the audit trail recorded for the approved step's start."""
    started_by: dict[str, str | None] = {}
    for row in audit_rows:  # the first start: retries are the operator's doing
        if row.get("reason") == "StepStarted" and row.get("item_index") is None:
            started_by.setdefault(row["step"], row.get("actor"))
    return [
        {
            "step": approval["step"],
            "approvedBy": approval["approvedBy"],
            "message": approval.get("message"),
            "stepStartedBy": started_by.get(approval["step"]),
        }
        for approval in spec.get("approvals") or []
    ]
