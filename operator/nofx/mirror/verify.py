"""Verification of the audit trail as stored: what `nofx audit verify` runs, against one
region's database or a global one holding every region's rows. This module reads; what it
finds in each stream is decided in audit_checks.py."""

from __future__ import annotations

from collections import defaultdict
from itertools import groupby
from typing import Any

import psycopg
from psycopg.rows import dict_row

from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.mirror.audit_checks import Verification
from nofx.mirror.chain import Checkpoint
from nofx.mirror.keys import KeyRing

StreamKey = tuple[str, str]  # region, stream

# Every row with the checkpoint signed at its seq, if any, in (region, stream, seq) order.
ROWS = """
SELECT e.*, c.hash AS checkpoint_hash, c.at AS checkpoint_at, c.key_id AS checkpoint_key_id,
       c.mac AS checkpoint_mac
FROM audit_events e
LEFT JOIN audit_checkpoints c ON (c.region, c.stream, c.seq) = (e.region, e.stream, e.seq)
WHERE %(stream)s::text IS NULL OR e.stream = %(stream)s
ORDER BY e.region, e.stream, e.seq
"""

# Checkpoints whose signed row is gone: a deleted row, the newest ones included.
ORPHAN_CHECKPOINTS = """
SELECT c.* FROM audit_checkpoints c
WHERE (%(stream)s::text IS NULL OR c.stream = %(stream)s)
  AND NOT EXISTS (SELECT 1 FROM audit_events e
                  WHERE (e.region, e.stream, e.seq) = (c.region, c.stream, c.seq))
"""

# Finished Runs without any checkpoint, unless an unkeyed row shows they were (at least partly)
# written before audit keys, when no checkpoint was made.
UNSIGNED_FINISHED_RUNS = """
SELECT r.region, 'run/' || r.uid AS stream, r.phase FROM runs r
WHERE r.phase = ANY(%(terminal)s)
  AND (%(stream)s::text IS NULL OR 'run/' || r.uid = %(stream)s)
  AND NOT EXISTS (SELECT 1 FROM audit_checkpoints c
                  WHERE c.region = r.region AND c.stream = 'run/' || r.uid)
  AND NOT EXISTS (SELECT 1 FROM audit_events e
                  WHERE e.region = r.region AND e.stream = 'run/' || r.uid AND e.key_id IS NULL)
"""


def verify(
    conn: psycopg.Connection[Any], stream: str | None = None, keys: KeyRing | None = None
) -> Verification:
    """Check every (region, stream) in the database, or one stream in every region."""
    found = Verification(keys)
    params = {"stream": stream, "terminal": sorted(TERMINAL_RUN_PHASES)}
    with conn.transaction():
        # One snapshot for every query: a Run ending meanwhile is seen whole or not at all.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with conn.cursor(row_factory=dict_row) as cur:
            orphans: dict[StreamKey, list[Checkpoint]] = defaultdict(list)
            for row in cur.execute(ORPHAN_CHECKPOINTS, params):
                orphans[(row["region"], row["stream"])].append(Checkpoint(**row))
            finished = {
                (row["region"], row["stream"]): row["phase"]
                for row in cur.execute(UNSIGNED_FINISHED_RUNS, params)
            }
        # A named cursor streams the rows from the server instead of loading the whole table.
        with conn.cursor("nofx_verify", row_factory=dict_row) as cur:
            cur.itersize = 2000
            cur.execute(ROWS, params)
            for (region, name), group in groupby(
                cur, key=lambda row: (row["region"], row["stream"])
            ):
                rows = list(group)
                signed = [checkpoint for row in rows if (checkpoint := _checkpoint_of(row))]
                signed += orphans.pop((region, name), [])
                found.add_stream(region, name, rows, signed, finished.pop((region, name), None))
    # Streams with no rows left at all.
    for region, name in sorted(orphans.keys() | finished.keys()):
        found.add_stream(
            region, name, [], orphans.get((region, name), []), finished.get((region, name))
        )
    return found


def _checkpoint_of(row: dict[str, Any]) -> Checkpoint | None:
    if row["checkpoint_mac"] is None:
        return None
    return Checkpoint(
        row["region"], row["stream"], row["seq"], row["checkpoint_hash"], row["checkpoint_at"],
        row["checkpoint_key_id"], row["checkpoint_mac"],
    )  # fmt: skip
