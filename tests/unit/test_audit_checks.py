"""What `nofx audit verify` finds in one stream's rows and checkpoints: edits, deletions (the
newest included), re-orders, forged checkpoints, a finished Run without one, and what it could
not check without keys. No database: rows are built as Store.write stores them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from nofx.mirror import chain
from nofx.mirror.audit_checks import Verification
from nofx.mirror.keys import AuditKey, KeyRing
from nofx.mirror.records import AuditEvent
from nofx.mirror.streams import event_row

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
OLD, NEW = b"o" * 32, b"n" * 32
KEYS = KeyRing({"k1": OLD}, "k1")
STREAM = "run/u1"


def event(seq: int, reason: str = "StepStarted", to_phase: str = "Running") -> AuditEvent:
    step = None if reason.startswith("Run") else "build"
    return AuditEvent(
        STREAM, seq, T0 + timedelta(seconds=seq), "Run", "team", "demo", "u1", reason,
        f"event {seq}", step=step, to_phase=to_phase,
    )  # fmt: skip


def stored(events: list[AuditEvent], keys: list[AuditKey | None]) -> list[dict[str, Any]]:
    rows, prev = [], chain.FIRST_PREV_HASH
    for each, key in zip(events, keys, strict=True):
        rows.append(event_row("eu", each, prev, key))
        prev = rows[-1]["hash"]
    return rows


def finished_run(key: AuditKey | None = None) -> list[dict[str, Any]]:
    """Four keyed rows, the last the Run's end."""
    events = [event(1), event(2), event(3), event(4, "RunSucceeded", "Succeeded")]
    return stored(events, [key or KEYS.current] * 4)


def head(rows: list[dict[str, Any]], key: AuditKey | None = None) -> chain.Checkpoint:
    last = rows[-1]
    return chain.sign_checkpoint(key or KEYS.current, "eu", STREAM, last["seq"], last["hash"], T0)


def check(
    rows: list[dict[str, Any]],
    checkpoints: list[chain.Checkpoint],
    keys: KeyRing | None = KEYS,
    finished_phase: str | None = None,
) -> Verification:
    found = Verification(keys)
    found.add_stream("eu", STREAM, rows, checkpoints, finished_phase)
    return found


def problems(*args: Any, **kwargs: Any) -> list[str]:
    prefix = f"region eu stream {STREAM} "
    found = check(*args, **kwargs).problems
    assert all(problem.startswith(prefix) for problem in found)
    return [problem.removeprefix(prefix) for problem in found]


def test_an_intact_finished_run_with_its_checkpoint_verifies() -> None:
    rows = finished_run()
    found = check(rows, [head(rows)])
    assert (found.problems, found.notes()) == ([], [])
    assert found.summary() == "1 streams, 4 rows (4 keyed, 0 unkeyed), 1 checkpoints (keys k1)"


def test_an_edited_row_is_named_by_its_mac() -> None:
    rows = finished_run()
    rows[1]["message"] = "nothing to see"
    assert problems(rows, [head(rows)]) == [
        "seq 2: MAC mismatch (key k1), the row was changed after it was written"
    ]


def test_a_row_rewritten_without_the_key_does_not_verify() -> None:
    rows = finished_run()
    forged = dataclasses.replace(event(2), message="forged")
    rows[1] = event_row("eu", forged, rows[0]["hash"], AuditKey("k1", b"guess" * 8))
    assert problems(rows, [head(rows)])[0].startswith("seq 2: MAC mismatch (key k1)")


def test_a_deleted_middle_row_is_a_gap() -> None:
    rows = finished_run()
    checkpoint = head(rows)
    del rows[1]
    assert problems(rows, [checkpoint]) == ["seq 3: gap, seq 2 is missing (deleted)"]


def test_a_deleted_newest_row_shows_against_the_checkpoint() -> None:
    rows = finished_run()
    checkpoint = head(rows)
    assert problems(rows[:-1], [checkpoint]) == [
        "seq 4: deleted, the checkpoint of 2026-03-01T09:00:00.000000Z signed it as the head;"
        " the stream now ends at seq 3"
    ]
    assert problems([], [checkpoint])[0].endswith("the stream has no rows")


def test_re_ordered_rows_are_named() -> None:
    rows = finished_run()
    rows[1]["seq"], rows[2]["seq"] = 3, 2
    rows[1], rows[2] = rows[2], rows[1]
    assert problems(rows, [head(rows)]) == ["seq 2: re-ordered, it follows seq 3, not seq 1"]


def test_a_forged_or_changed_checkpoint_is_named() -> None:
    rows = finished_run()
    forged = dataclasses.replace(head(rows), mac="00" * 32)
    assert problems(rows, [forged]) == [
        "checkpoint seq 4: its MAC does not verify with key k1: forged or changed"
    ]
    # Signed with another key that names itself k1: the same.
    other = head(rows, AuditKey("k1", b"x" * 32))
    assert problems(rows, [other]) == [
        "checkpoint seq 4: its MAC does not verify with key k1: forged or changed"
    ]


def test_a_checkpoint_whose_row_was_rewritten_is_named() -> None:
    rows = finished_run()
    checkpoint = chain.sign_checkpoint(KEYS.current, "eu", STREAM, 4, "ab" * 32, T0)
    assert problems(rows, [checkpoint]) == [
        "seq 4: rewritten, its hash is not the one the checkpoint of 2026-03-01T09:00:00.000000Z"
        " signed"
    ]


def test_a_finished_run_without_a_checkpoint_is_named() -> None:
    rows = finished_run()
    assert problems(rows, []) == [
        "finished (RunSucceeded at seq 4) but no checkpoint signs its head: a checkpoint was"
        " deleted"
    ]
    # Its end deleted too: the runs table still says how it ended.
    assert problems(rows[:-1], [], finished_phase="Succeeded") == [
        "its Run is Succeeded (runs table) but no checkpoint signs its head: its newest rows and"
        " the checkpoint may have been deleted"
    ]
    # A running Run has none yet.
    assert problems(rows[:-1], []) == []


def test_rows_written_before_keys_verify_as_unkeyed_and_say_so() -> None:
    events = [event(1), event(2), event(3, "RunSucceeded", "Succeeded")]
    rows = stored(events, [None, None, None])
    found = check(rows, [])
    assert found.problems == []
    assert found.notes() == [
        "unkeyed: 3 rows in 1 streams were written without an audit key (plain sha256): whoever"
        " can write rows can rewrite them consistently, unless a keyed row or checkpoint follows"
        " them"
    ]
    rows[0]["message"] = "edited"
    assert problems(rows, []) == ["seq 1: hash mismatch, the row was changed after it was written"]


def test_a_stream_keyed_after_an_upgrade_verifies_but_not_back_to_unkeyed() -> None:
    events = [event(1), event(2), event(3)]
    assert problems(stored(events, [None, KEYS.current, KEYS.current]), []) == []
    assert problems(stored(events, [KEYS.current, None, None]), []) == [
        "seq 2: unkeyed after the keyed seq 1: written without the audit key, or rewritten to"
        " avoid it"
    ]


def test_old_rows_verify_with_their_key_id_after_rotation() -> None:
    old = finished_run()
    rotated = KeyRing({"k1": OLD, "k2": NEW}, "k2")
    new_key = rotated.current
    events = [event(1), event(2), event(3)]
    newer = stored(events, [new_key] * 3)
    found = Verification(rotated)
    found.add_stream("eu", STREAM, old, [head(old)])
    found.add_stream("eu", "run/u2", newer, [head(newer, new_key)])
    assert found.problems == []
    assert found.key_ids == {"k1", "k2"}
    # Without the old key file, its rows cannot be checked: that is a problem, not a pass.
    assert problems(old, [head(old)], keys=KeyRing({"k2": NEW}, "k2")) == [
        "seq 1: signed with key k1, which is not in the key directory",
        "checkpoint seq 4: signed with key k1, which is not in the key directory",
    ]


def test_without_keys_links_and_heads_are_checked_and_macs_are_not() -> None:
    rows = finished_run()
    checkpoint = head(rows)
    found = check(rows, [checkpoint], keys=None)
    assert found.problems == []
    assert found.notes() == [
        "not checked: the MACs of 5 keyed rows and checkpoints (keys k1); without the key"
        " directory (--audit-key-dir or NOFX_AUDIT_KEY_DIR) an edited row or a forged"
        " checkpoint goes unnoticed, deleted and re-ordered rows do not"
    ]
    assert problems(rows[:-1], [checkpoint], keys=None)[0].startswith("seq 4: deleted")
    edited = finished_run()
    edited[1]["message"] = "edited"
    assert problems(edited, [checkpoint], keys=None) == []  # the documented blind spot
