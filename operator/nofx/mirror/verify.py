"""Verification of the hash chains as stored: what `nofx audit verify` runs, against one
region's database or a global one holding every region's rows."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby
from typing import Any

import psycopg
from psycopg.rows import dict_row

from nofx.mirror import chain
from nofx.mirror.records import AuditEvent
from nofx.mirror.streams import EVENT_FIELDS


def verify(conn: psycopg.Connection[Any], stream: str | None = None) -> list[str]:
    """Recompute the chain of every (region, stream) in the database, or of one stream in
    every region: [] when intact, else one message per broken chain naming its first bad
    row. (Removing the newest events of a stream leaves a valid chain: it has no anchor.)"""
    problems = []
    # A named cursor streams the rows from the server instead of loading the whole table.
    with conn.transaction(), conn.cursor("nofx_verify", row_factory=dict_row) as cur:
        cur.itersize = 2000
        cur.execute(
            "SELECT * FROM audit_events WHERE %(stream)s::text IS NULL OR stream = %(stream)s"
            " ORDER BY region, stream, seq",
            {"stream": stream},
        )
        for (region, name), rows in groupby(cur, key=lambda row: (row["region"], row["stream"])):
            problem = _first_break(rows)
            if problem:
                problems.append(f"region {region} stream {name} {problem}")
    return problems


def _first_break(rows: Iterable[dict[str, Any]]) -> str | None:
    """'seq N: what is wrong' for the first row of one stream's rows (in seq order) that does
    not continue the chain, or None."""
    expected, prev = 1, chain.FIRST_PREV_HASH
    for row in rows:
        seq = row["seq"]
        if seq != expected:
            return f"seq {seq}: gap, seq {expected} is missing"
        if row["prev_hash"] != prev:
            return f"seq {seq}: prev_hash mismatch, it does not match the hash of seq {seq - 1}"
        event = AuditEvent(**{field: row[field] for field in EVENT_FIELDS})
        if chain.event_hash(prev, event, row["region"]) != row["hash"]:
            return f"seq {seq}: hash mismatch, the row was changed after it was written"
        expected, prev = seq + 1, row["hash"]
    return None
