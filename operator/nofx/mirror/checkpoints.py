"""Writing signed checkpoints of stream heads, inside a caller's transaction: one for each Run
stream that reached its end (written with the rows that end it), and periodically one for each
Agent or Template stream that changed since its last. A checkpoint is what makes a deleted
newest row visible: the head it signs is no longer found (verify.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

import psycopg

from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.mirror import bulk, chain
from nofx.mirror.keys import AuditKey
from nofx.mirror.records import RunRecord

INSERT = bulk.Insert("audit_checkpoints", [field.name for field in fields(chain.Checkpoint)])

# Heads of Agent and Template streams (a partial index keeps the Runs' rows out) with no
# checkpoint at or after them.
UNSIGNED_REGISTRY_HEADS = """
SELECT h.stream, h.seq, h.hash FROM (
    SELECT DISTINCT ON (stream) stream, seq, hash FROM audit_events
    WHERE region = %(region)s AND kind <> 'Run' ORDER BY stream, seq DESC
) AS h
WHERE NOT EXISTS (
    SELECT 1 FROM audit_checkpoints c
    WHERE c.region = %(region)s AND c.stream = h.stream AND c.seq >= h.seq
)
"""


def ends_run(row: dict[str, Any]) -> bool:
    """The row is a Run's own move to a terminal phase (not one of its steps')."""
    return row["kind"] == "Run" and row["step"] is None and row["to_phase"] in TERMINAL_RUN_PHASES


def checkpoint_finished_runs(
    cur: psycopg.Cursor[Any],
    region: str,
    appended: Sequence[dict[str, Any]],
    runs: Sequence[RunRecord],
    key: AuditKey,
    now: datetime,
) -> int:
    """Sign the new head of every Run stream the batch appended to that has reached its end (by
    a row of the batch, or as its Run record says); returns how many were signed."""
    finished = {f"run/{run.uid}" for run in runs if run.phase in TERMINAL_RUN_PHASES}
    finished |= {row["stream"] for row in appended if ends_run(row)}
    heads: dict[str, tuple[int, str]] = {}
    for row in appended:  # a stream's newest appended row is its head: seqs have no gaps
        if row["seq"] > heads.get(row["stream"], (0, ""))[0]:
            heads[row["stream"]] = (row["seq"], row["hash"])
    signed = [
        chain.sign_checkpoint(key, region, stream, seq, digest, now)
        for stream, (seq, digest) in sorted(heads.items())
        if stream in finished
    ]
    if signed:
        INSERT.execute(cur, [vars(checkpoint) for checkpoint in signed])
    return len(signed)


def checkpoint_registry(cur: psycopg.Cursor[Any], region: str, key: AuditKey, now: datetime) -> int:
    """Sign the head of every Agent and Template stream that changed since its last
    checkpoint; returns how many were signed."""
    heads = cur.execute(UNSIGNED_REGISTRY_HEADS, {"region": region}).fetchall()
    signed = [
        chain.sign_checkpoint(key, region, stream, seq, digest, now)
        for stream, seq, digest in heads
    ]
    if signed:
        INSERT.execute(cur, [vars(checkpoint) for checkpoint in signed])
    return len(signed)
