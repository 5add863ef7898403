"""The hash chain of audit events and the signed heads of streams. Pure functions.

Each event's hash covers its predecessor's hash, so editing or deleting a stored row breaks
every later link. With an audit key (keys.py) the hash is an HMAC, so rewriting a stream
consistently needs the key; rows written without one keep plain sha256. A checkpoint signs a
stream's head (its last seq and hash), so deleting the newest rows shows as well.

The Store computes hashes when writing and recomputes them from the stored columns when
verifying, so the encoding must survive a round trip through Postgres exactly: timestamps are
encoded in UTC with microseconds, which is timestamptz's precision.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from nofx.mirror.keys import AuditKey
from nofx.mirror.records import AuditEvent

FIRST_PREV_HASH = ""  # what the first event of a stream (seq 1) links to
# Starts every signed checkpoint, so that no row's bytes (which start with a hash) sign as one.
CHECKPOINT_PREFIX = b"nofx-checkpoint/v1\n"


def stream_name(kind: str, namespace: str, name: str, uid: str) -> str:
    """Runs chain per object (uid); Agents and Templates per name, across re-creations."""
    if kind == "Run":
        return f"run/{uid}"
    if kind in ("Agent", "Template"):
        return f"{kind.lower()}/{namespace}/{name}"
    raise ValueError(f"no audit stream for kind {kind!r} (expected Run, Agent or Template)")


def encode_time(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError(f"audit timestamps must be timezone-aware, got {at!r}")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode(value: Any) -> Any:
    return encode_time(value) if isinstance(value, datetime) else value


def canonical(event: AuditEvent, region: str) -> bytes:
    """JSON of every field plus the region: sorted keys, compact, ASCII only."""
    fields = {f.name: _encode(getattr(event, f.name)) for f in dataclasses.fields(event)}
    fields["region"] = region
    return _json(fields)


def _json(fields: dict[str, Any]) -> bytes:
    """Sorted keys, compact, ASCII only."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def event_hash(prev_hash: str, event: AuditEvent, region: str, key: AuditKey | None = None) -> str:
    """Hex HMAC-SHA256 with the key (plain sha256 without one) of the predecessor's hash, a
    newline, and the event's canonical bytes."""
    message = prev_hash.encode() + b"\n" + canonical(event, region)
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A stream's head as it was at `at`: the row at `seq` had `hash`; signed with a key."""

    region: str
    stream: str
    seq: int
    hash: str
    at: datetime
    key_id: str
    mac: str


def checkpoint_message(region: str, stream: str, seq: int, head_hash: str, at: datetime) -> bytes:
    """The signed bytes: a prefix, then the head's fields as canonical JSON."""
    fields = {"region": region, "stream": stream, "seq": seq, "hash": head_hash}
    fields["at"] = encode_time(at)
    return CHECKPOINT_PREFIX + _json(fields)


def sign_checkpoint(
    key: AuditKey, region: str, stream: str, seq: int, head_hash: str, at: datetime
) -> Checkpoint:
    message = checkpoint_message(region, stream, seq, head_hash, at)
    mac = hmac.new(key.secret, message, hashlib.sha256).hexdigest()
    return Checkpoint(region, stream, seq, head_hash, at, key.id, mac)


def checkpoint_signed_by(checkpoint: Checkpoint, key: AuditKey) -> bool:
    """The checkpoint's MAC is the key's over its fields (constant-time comparison)."""
    expected = sign_checkpoint(
        key, checkpoint.region, checkpoint.stream, checkpoint.seq, checkpoint.hash, checkpoint.at
    )
    return hmac.compare_digest(expected.mac, checkpoint.mac)
