"""What `nofx audit verify` finds in one stream's stored rows and checkpoints, and the totals it
reports. Pure functions over plain data; verify.py reads the database.

A stream is checked in seq order: every seq present, each row linked to its predecessor's hash,
each hash recomputed (plain sha256 for rows written before audit keys, else an HMAC with the key
the row names). Then every checkpoint: its MAC, and the head it signed still stored as signed.
A finished Run whose rows are keyed must have a checkpoint, or its newest rows could be gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nofx.mirror import chain
from nofx.mirror.checkpoints import ends_run
from nofx.mirror.keys import KeyRing
from nofx.mirror.records import AuditEvent
from nofx.mirror.streams import EVENT_FIELDS

Row = dict[str, Any]  # an audit_events row: the event's fields, region, prev_hash, hash, key_id


@dataclass
class Verification:
    """Totals over every stream checked, and each problem prefixed with its region and stream."""

    keys: KeyRing | None
    problems: list[str] = field(default_factory=list)
    streams: int = 0
    rows: int = 0
    unkeyed_rows: int = 0
    unkeyed_streams: int = 0
    checkpoints: int = 0
    unchecked_macs: int = 0  # rows and checkpoints whose key was not given
    key_ids: set[str] = field(default_factory=set)

    def add_stream(
        self,
        region: str,
        stream: str,
        rows: Sequence[Row],
        checkpoints: Sequence[chain.Checkpoint],
        finished_phase: str | None = None,
    ) -> None:
        """Check one stream (rows in seq order; finished_phase: its Run's, if the runs table
        says it ended) and add what was found."""
        self.streams += 1
        self.rows += len(rows)
        self.checkpoints += len(checkpoints)
        unkeyed = sum(1 for row in rows if row["key_id"] is None)
        self.unkeyed_rows += unkeyed
        self.unkeyed_streams += 1 if unkeyed else 0
        self.key_ids |= {row["key_id"] for row in rows if row["key_id"]}
        self.key_ids |= {checkpoint.key_id for checkpoint in checkpoints}
        if self.keys is None:
            self.unchecked_macs += len(rows) - unkeyed + len(checkpoints)
        problems = [
            *filter(None, [first_break(rows, self.keys)]),
            *checkpoint_problems(rows, checkpoints, self.keys),
            *filter(None, [missing_checkpoint(rows, checkpoints, finished_phase)]),
        ]
        self.problems += [f"region {region} stream {stream} {problem}" for problem in problems]

    def notes(self) -> list[str]:
        """What could not be checked, and so what a clean result does not promise."""
        notes = []
        if self.unchecked_macs:
            notes.append(
                f"not checked: the MACs of {self.unchecked_macs} keyed rows and checkpoints"
                f" (keys {', '.join(sorted(self.key_ids))}); without the key directory"
                " (--audit-key-dir or NOFX_AUDIT_KEY_DIR) an edited row or a forged checkpoint"
                " goes unnoticed, deleted and re-ordered rows do not"
            )
        if self.unkeyed_rows:
            notes.append(
                f"unkeyed: {self.unkeyed_rows} rows in {self.unkeyed_streams} streams were"
                " written without an audit key (plain sha256): whoever can write rows can"
                " rewrite them consistently, unless a keyed row or checkpoint follows them"
            )
        return notes

    def summary(self) -> str:
        keyed = self.rows - self.unkeyed_rows
        ids = f" (keys {', '.join(sorted(self.key_ids))})" if self.key_ids else ""
        return (
            f"{self.streams} streams, {self.rows} rows ({keyed} keyed, {self.unkeyed_rows}"
            f" unkeyed), {self.checkpoints} checkpoints{ids}"
        )


def first_break(rows: Sequence[Row], keys: KeyRing | None) -> str | None:
    """'seq N: what is wrong' for the first row (in seq order) that does not continue the
    chain, or None. Without keys, keyed rows are checked for their links only."""
    seq_of_hash = {row["hash"]: row["seq"] for row in rows}
    expected, prev = 1, chain.FIRST_PREV_HASH
    keyed_seq = None
    for row in rows:
        seq, key_id = row["seq"], row["key_id"]
        if seq != expected:
            return f"seq {seq}: gap, seq {expected} is missing (deleted)"
        if row["prev_hash"] != prev:
            follows = seq_of_hash.get(row["prev_hash"])
            if follows is not None:
                return f"seq {seq}: re-ordered, it follows seq {follows}, not seq {seq - 1}"
            return f"seq {seq}: prev_hash mismatch, it does not match the hash of seq {seq - 1}"
        event = AuditEvent(**{name: row[name] for name in EVENT_FIELDS})
        if key_id is None:
            if keyed_seq is not None:
                return (
                    f"seq {seq}: unkeyed after the keyed seq {keyed_seq}: written without the"
                    " audit key, or rewritten to avoid it"
                )
            if chain.event_hash(prev, event, row["region"]) != row["hash"]:
                return f"seq {seq}: hash mismatch, the row was changed after it was written"
        else:
            keyed_seq = seq
            key = keys.get(key_id) if keys else None
            if keys and key is None:
                return f"seq {seq}: signed with key {key_id}, which is not in the key directory"
            if key and chain.event_hash(prev, event, row["region"], key) != row["hash"]:
                return (
                    f"seq {seq}: MAC mismatch (key {key_id}), the row was changed after it was"
                    " written"
                )
        expected, prev = seq + 1, row["hash"]
    return None


def checkpoint_problems(
    rows: Sequence[Row], checkpoints: Sequence[chain.Checkpoint], keys: KeyRing | None
) -> list[str]:
    """A checkpoint that is not the key's, or whose signed head is gone or rewritten."""
    by_seq = {row["seq"]: row for row in rows}
    last = rows[-1]["seq"] if rows else 0
    problems = []
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        at = chain.encode_time(checkpoint.at)
        if keys:
            key = keys.get(checkpoint.key_id)
            if key is None:
                problems.append(
                    f"checkpoint seq {checkpoint.seq}: signed with key {checkpoint.key_id},"
                    " which is not in the key directory"
                )
                continue
            if not chain.checkpoint_signed_by(checkpoint, key):
                problems.append(
                    f"checkpoint seq {checkpoint.seq}: its MAC does not verify with key"
                    f" {checkpoint.key_id}: forged or changed"
                )
                continue
        row = by_seq.get(checkpoint.seq)
        if row is None:
            problems.append(
                f"seq {checkpoint.seq}: deleted, the checkpoint of {at} signed it as the head;"
                + (f" the stream now ends at seq {last}" if last else " the stream has no rows")
            )
        elif row["hash"] != checkpoint.hash:
            problems.append(
                f"seq {checkpoint.seq}: rewritten, its hash is not the one the checkpoint of {at}"
                " signed"
            )
    return problems


def missing_checkpoint(
    rows: Sequence[Row], checkpoints: Sequence[chain.Checkpoint], finished_phase: str | None
) -> str | None:
    """A Run that ended, with keyed rows (so written by an operator that signs heads), and no
    checkpoint: its newest rows, the end among them, may have been deleted."""
    if checkpoints or (rows and rows[-1]["key_id"] is None):
        return None
    end = next((row for row in reversed(rows) if ends_run(row)), None)
    if end is not None:
        return (
            f"finished ({end['reason']} at seq {end['seq']}) but no checkpoint signs its head:"
            " a checkpoint was deleted"
        )
    if finished_phase is not None:
        return (
            f"its Run is {finished_phase} (runs table) but no checkpoint signs its head: its"
            " newest rows and the checkpoint may have been deleted"
        )
    return None
