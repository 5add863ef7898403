"""Appending to audit streams in Postgres, inside a caller's transaction: lock the streams,
link each new event to its stored predecessor (or to one earlier in the batch), hash it (with
the current audit key, if any, whose id the row keeps).

Every function takes the cursor of an open transaction and the region whose rows it reads and
writes; a stream's lock is held until that transaction ends.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import psycopg

from nofx.mirror import bulk, chain
from nofx.mirror.errors import ChainGapError, Rejected
from nofx.mirror.keys import AuditKey, KeyRing
from nofx.mirror.records import AuditEvent

log = logging.getLogger(__name__)

EVENT_FIELDS = [f.name for f in dataclasses.fields(AuditEvent)]
AUDIT_COLUMNS = ["region", *EVENT_FIELDS, "prev_hash", "hash", "key_id"]

# Rows of chain_rows or event_row, in one statement; those already stored are skipped.
INSERT_EVENTS = bulk.Insert("audit_events", AUDIT_COLUMNS)


def lock_streams(cur: psycopg.Cursor[Any], region: str, streams: list[str]) -> None:
    # Writers of the same stream take turns until commit, so two transactions never both
    # chain onto the same predecessor. Sorted, so that two batches cannot deadlock.
    cur.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s || ':' || s, 0))"
        " FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n) ORDER BY n",
        (region, sorted(streams)),
    )


def chain_rows(
    cur: psycopg.Cursor[Any], region: str, events: list[AuditEvent], keys: KeyRing | None
) -> list[dict[str, Any]]:
    """Rows (with prev_hash, hash and key_id) of the events not yet stored, after locking their
    streams; links to stored predecessors or to earlier events of the batch."""
    if not events:
        return []
    for event in events:
        if event.seq < 1:
            raise Rejected(f"audit event seq must be >= 1: {event}")
    lock_streams(cur, region, list({event.stream for event in events}))
    # Stored hashes from each stream's first seq - 1 to its last seq in the batch. LATERAL:
    # one index range scan per stream, whatever the planner thinks of the table's size.
    low: dict[str, int] = {}
    high: dict[str, int] = {}
    for e in events:
        low[e.stream] = min(low.get(e.stream, e.seq), e.seq - 1)
        high[e.stream] = max(high.get(e.stream, e.seq), e.seq)
    cur.execute(
        "SELECT a.stream, a.seq, a.hash, a.key_id"
        " FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS w(stream, low, high),"
        " LATERAL (SELECT stream, seq, hash, key_id FROM audit_events WHERE region = %s"
        "          AND stream = w.stream AND seq BETWEEN w.low AND w.high) AS a",
        (list(low), list(low.values()), [high[stream] for stream in low], region),
    )
    hashes: dict[tuple[str, int], str] = {}
    key_ids: dict[tuple[str, int], str | None] = {}
    for stream, seq, digest, key_id in cur.fetchall():
        hashes[(stream, seq)], key_ids[(stream, seq)] = digest, key_id
    signing_key = keys.current if keys else None
    rows = []
    for event in sorted(events, key=lambda e: (e.stream, e.seq)):
        prev = (
            chain.FIRST_PREV_HASH if event.seq == 1 else hashes.get((event.stream, event.seq - 1))
        )
        known = hashes.get((event.stream, event.seq))
        if known is not None:
            # Already stored (or earlier in this batch): the first version stays.
            key_id = key_ids.get((event.stream, event.seq))
            key = keys.get(key_id) if keys and key_id else None
            if key_id and key is None:
                continue  # signed with a key we no longer hold: nothing to compare with
            if prev is not None and chain.event_hash(prev, event, region, key) != known:
                log.warning(
                    "audit event %s seq %d differs from the one already written; kept the first",
                    event.stream,
                    event.seq,
                )
            continue
        if prev is None:
            raise ChainGapError(
                f"audit stream {event.stream!r} of region {region!r}: cannot write seq"
                f" {event.seq}, seq {event.seq - 1} is neither stored nor in this batch"
            )
        row = event_row(region, event, prev, signing_key)
        hashes[(event.stream, event.seq)] = row["hash"]
        key_ids[(event.stream, event.seq)] = row["key_id"]
        rows.append(row)
    return rows


def tip(cur: psycopg.Cursor[Any], region: str, stream: str) -> tuple[int, str]:
    """Seq and hash of a stream's newest event ((0, "") if none); hold the stream's lock."""
    newest = cur.execute(
        "SELECT seq, hash FROM audit_events WHERE region = %s AND stream = %s"
        " ORDER BY seq DESC LIMIT 1",
        (region, stream),
    ).fetchone()
    return (newest[0], newest[1]) if newest else (0, chain.FIRST_PREV_HASH)


def row(region: str, record: Any) -> dict[str, Any]:
    """The record's fields and its region, as query parameters."""
    # Shallow, unlike dataclasses.asdict, which deep-copies every value.
    fields = dataclasses.fields(record)
    return {"region": region, **{f.name: getattr(record, f.name) for f in fields}}


def event_row(
    region: str, event: AuditEvent, prev_hash: str, key: AuditKey | None
) -> dict[str, Any]:
    digest = chain.event_hash(prev_hash, event, region, key)
    key_id = key.id if key else None
    return {**row(region, event), "prev_hash": prev_hash, "hash": digest, "key_id": key_id}
