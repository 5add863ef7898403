"""Agents and Templates for the mirror: their spec versions and deletions, offered to the
writer from their reconcilers' watch events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nofx.api.identity import changed_by
from nofx.mirror import report
from nofx.mirror.records import Deletion, SpecVersion
from nofx.mirror.writer import MirrorWriter


def offer_registry_event(
    writer: MirrorWriter | None,
    kind: str,
    event_type: str | None,
    body: dict[str, Any],
    spec_hash: str | None,
) -> None:
    """An Agent or Template was created, changed or deleted: its spec version, or the deletion."""
    if writer is None:
        return
    metadata = body["metadata"]
    now = datetime.now(UTC)
    if event_type == "DELETED":
        writer.offer_version(
            Deletion(
                kind,
                metadata["namespace"],
                metadata["name"],
                metadata["uid"],
                now,
                None,  # a DELETE is not stamped: who deleted it is in the API server's audit log
            )
        )
    elif spec_hash is not None:
        writer.offer_version(
            SpecVersion(
                kind=kind,
                namespace=metadata["namespace"],
                name=metadata["name"],
                uid=metadata["uid"],
                spec=dict(body.get("spec") or {}),
                spec_hash=spec_hash,
                at=now,
                actor=changed_by(metadata),
            ),
            was_rejected=report.was_rejected(body),
        )
