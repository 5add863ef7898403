"""The history of Agents and Templates in Postgres: each changed spec as a numbered version
with its audit event, and each deletion as an event, chained on the object's stream.

Each function takes the cursor of an open transaction and the region it writes; Runs are not
written here (they have their own numbering in the operator's outbox and go through Store.write).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from nofx.mirror import chain, streams
from nofx.mirror.escaping import escape_fields, escape_json
from nofx.mirror.keys import AuditKey
from nofx.mirror.records import AuditEvent, SpecVersion


def record_version(
    cur: psycopg.Cursor[Any], region: str, version: SpecVersion, key: AuditKey | None
) -> int | None:
    """Store the spec as version N+1 with its audit event, unless the latest version of
    the same object (same uid) has the same spec_hash; returns N+1, or None.

    A re-created object (new uid) gets a new version even with an unchanged spec, and its
    event says Created, so the history reads Created, ..., Deleted, Created."""
    stream = registry_stream(version.kind, version.namespace, version.name)
    stored = escape_fields(version)
    streams.lock_streams(cur, region, [stream])
    latest = cur.execute(
        "SELECT version, spec_hash, uid FROM spec_versions"
        " WHERE region = %s AND kind = %s AND namespace = %s AND name = %s"
        " ORDER BY version DESC LIMIT 1",
        (region, stored.kind, stored.namespace, stored.name),
    ).fetchone()
    if latest and (latest[1], latest[2]) == (stored.spec_hash, stored.uid):
        return None
    number = latest[0] + 1 if latest else 1
    created = latest is None or latest[2] != stored.uid
    cur.execute(
        "INSERT INTO spec_versions"
        " (region, kind, namespace, name, version, uid, spec, spec_hash, at, actor)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            region,
            stored.kind,
            stored.namespace,
            stored.name,
            number,
            stored.uid,
            Jsonb(escape_json(version.spec)),
            stored.spec_hash,
            stored.at,
            stored.actor,
        ),
    )
    seq, prev = streams.tip(cur, region, stream)
    event = AuditEvent(
        stream=stream,
        seq=seq + 1,
        at=version.at,
        kind=version.kind,
        namespace=version.namespace,
        name=version.name,
        uid=version.uid,
        reason="Created" if created else "Updated",
        message=f"{version.kind} {version.namespace}/{version.name} version {number}",
        actor=version.actor,
        spec_hash=version.spec_hash,
    )
    row = streams.event_row(region, escape_fields(event), prev, key)
    streams.INSERT_EVENTS.execute(cur, [row])
    return number


def record_deletion(
    cur: psycopg.Cursor[Any],
    region: str,
    kind: str,
    namespace: str,
    name: str,
    uid: str,
    at: datetime,
    actor: str | None,
    key: AuditKey | None,
) -> None:
    """Append a Deleted event to the Agent's or Template's stream, once per uid."""
    stream = registry_stream(kind, namespace, name)
    streams.lock_streams(cur, region, [stream])
    already = cur.execute(
        "SELECT 1 FROM audit_events WHERE region = %s AND stream = %s AND uid = %s"
        " AND reason = 'Deleted'",
        (region, stream, uid),
    ).fetchone()
    if already:
        return
    seq, prev = streams.tip(cur, region, stream)
    event = AuditEvent(
        stream=stream,
        seq=seq + 1,
        at=at,
        kind=kind,
        namespace=namespace,
        name=name,
        uid=uid,
        reason="Deleted",
        message=f"{kind} {namespace}/{name} deleted",
        actor=actor,
    )
    row = streams.event_row(region, escape_fields(event), prev, key)
    streams.INSERT_EVENTS.execute(cur, [row])


def registry_stream(kind: str, namespace: str, name: str) -> str:
    # Runs have their own numbering in the operator's outbox and go through Store.write().
    if kind not in ("Agent", "Template"):
        raise ValueError(f"spec versions and deletions are for Agents and Templates, not {kind!r}")
    return chain.stream_name(kind, namespace, name, uid="")
