"""Reversible escaping of NUL for Postgres text and jsonb, and the hash chain over the escaped
form: what `nofx audit verify` recomputes from the stored columns."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from nofx.mirror import chain
from nofx.mirror.audit_checks import first_break
from nofx.mirror.escaping import (
    escape,
    escape_fields,
    escape_json,
    unescape,
    unescape_json,
    unescape_row,
)
from nofx.mirror.records import AuditEvent
from nofx.mirror.streams import AUDIT_COLUMNS

ESC = "\u2400"
TRICKY = [
    "",
    "plain text",
    "\x00",
    "a\x00b\x00\x00",
    ESC,
    ESC + "0",  # looks like an escaped NUL, but is what the user wrote
    ESC + ESC + "\x00" + ESC,
    "\x00" + ESC + "0",
    "ünïcödé \U0001f916 \\u0000",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_and_nothing_postgres_refuses_is_left(text: str) -> None:
    escaped = escape(text)
    assert "\x00" not in escaped
    assert unescape(escaped) == text


def test_text_without_nul_or_the_escape_character_is_stored_as_it_is() -> None:
    assert escape("exit code 3") == "exit code 3"
    assert escape("a\x00b") == f"a{ESC}0b"
    assert escape(ESC) == ESC + ESC


def test_a_stray_escape_character_in_old_rows_reads_as_it_is() -> None:
    assert unescape(f"x{ESC}y{ESC}") == f"x{ESC}y{ESC}"


def test_json_keys_and_nested_strings_round_trip() -> None:
    spec = {"description": "a\x00b", "tools": [{"na\x00me": ESC, "n": 1, "ok": None}]}
    escaped = escape_json(spec)
    assert "\x00" not in repr(escaped)
    assert escaped["tools"][0] == {f"na{ESC}0me": ESC + ESC, "n": 1, "ok": None}
    assert unescape_json(escaped) == spec


def event(seq: int, message: str) -> AuditEvent:
    return AuditEvent(
        stream="run/u1", seq=seq, at=datetime(2030, 1, 1, tzinfo=UTC), kind="Run",
        namespace="team", name="nul", uid="u1", reason="StepFailed", message=message,
        step="st\x00ep",
    )  # fmt: skip


def test_the_chain_of_escaped_events_verifies_from_the_stored_columns() -> None:
    # What Store.write stores: escaped fields, hashed as stored.
    stored, prev = [], chain.FIRST_PREV_HASH
    for seq, message in enumerate(["exit\x00code", f"{ESC}0 typed", "plain"], start=1):
        escaped = escape_fields(event(seq, message))
        digest = chain.event_hash(prev, escaped, "eu")
        row = {"region": "eu", **dataclasses.asdict(escaped), "prev_hash": prev, "hash": digest,
               "key_id": None}  # fmt: skip
        assert set(row) == set(AUDIT_COLUMNS)
        stored.append(row)
        prev = digest
    assert first_break(stored, keys=None) is None
    assert unescape_row(stored[0])["message"] == "exit\x00code"
    assert unescape_row(stored[1])["message"] == f"{ESC}0 typed"
    # The escaping is covered by the hash: storing the raw NUL form would not verify.
    stored[0]["message"] = "exit\ufffdcode"
    assert first_break(stored, keys=None) == (
        "seq 1: hash mismatch, the row was changed after it was written"
    )


def test_escape_fields_leaves_clean_records_untouched() -> None:
    clean = event(1, "fine")
    clean = dataclasses.replace(clean, step="step")
    assert escape_fields(clean) is clean
