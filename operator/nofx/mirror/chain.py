"""The hash chain of audit events: canonical bytes of an event and its hash. Pure functions.

Each event's hash covers its predecessor's hash, so editing or deleting a stored row breaks
every later link. The Store computes hashes when writing and recomputes them from the stored
columns when verifying, so the encoding must survive a round trip through Postgres exactly:
timestamps are encoded in UTC with microseconds, which is timestamptz's precision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from nofx.mirror.records import AuditEvent

FIRST_PREV_HASH = ""  # what the first event of a stream (seq 1) links to


def stream_name(kind: str, namespace: str, name: str, uid: str) -> str:
    """Runs chain per object (uid); Agents and Templates per name, across re-creations."""
    if kind == "Run":
        return f"run/{uid}"
    if kind in ("Agent", "Template"):
        return f"{kind.lower()}/{namespace}/{name}"
    raise ValueError(f"no audit stream for kind {kind!r} (expected Run, Agent or Template)")


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"audit timestamps must be timezone-aware, got {value!r}")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def canonical(event: AuditEvent, region: str) -> bytes:
    """JSON of every field plus the region: sorted keys, compact, ASCII only."""
    fields = {f.name: _encode(getattr(event, f.name)) for f in dataclasses.fields(event)}
    fields["region"] = region
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(prev_hash: str, event: AuditEvent, region: str) -> str:
    """sha256 hex of the predecessor's hash, a newline, and the event's canonical bytes."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(event, region)).hexdigest()
