"""The audit hash chain: canonical bytes, hashes and MACs of events, and signed checkpoints of
stream heads, no database."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from nofx.mirror.chain import (
    CHECKPOINT_PREFIX,
    FIRST_PREV_HASH,
    Checkpoint,
    canonical,
    checkpoint_message,
    checkpoint_signed_by,
    event_hash,
    sign_checkpoint,
    stream_name,
)
from nofx.mirror.keys import AuditKey
from nofx.mirror.records import AuditEvent

EVENT = AuditEvent(
    stream="run/0b7c",
    seq=3,
    at=datetime(2025, 3, 1, 9, 30, 5, 120, tzinfo=UTC),
    kind="Run",
    namespace="team-a",
    name="demo",
    uid="0b7c",
    reason="StepStarted",
    message="step build started",
    step="build",
    item_index=2,
    attempt=1,
    from_phase="Pending",
    to_phase="Running",
    actor="system:serviceaccount:nofx:operator",
    spec_hash=None,
)

# A different value of the same type for every field.
OTHER_VALUES: dict[str, Any] = {
    "stream": "run/ffff",
    "seq": 4,
    "at": EVENT.at + timedelta(microseconds=1),
    "kind": "Agent",
    "namespace": "team-b",
    "name": "demo2",
    "uid": "0b7d",
    "reason": "StepSucceeded",
    "message": "step build started!",
    "step": "test",
    "item_index": None,
    "attempt": 2,
    "from_phase": None,
    "to_phase": "Succeeded",
    "actor": None,
    "spec_hash": "abc",
}


def test_every_field_has_another_value_in_this_test() -> None:
    assert set(OTHER_VALUES) == {f.name for f in dataclasses.fields(AuditEvent)}


def test_canonical_form_is_sorted_compact_json_with_utc_microseconds() -> None:
    decoded = json.loads(canonical(EVENT, "eu"))
    assert decoded["at"] == "2025-03-01T09:30:05.000120Z"
    assert decoded["region"] == "eu"
    assert decoded["spec_hash"] is None
    assert (
        canonical(EVENT, "eu")
        == json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode()
    )


def test_hash_is_deterministic_and_documented() -> None:
    expected = hashlib.sha256(b"prev\n" + canonical(EVENT, "eu")).hexdigest()
    assert event_hash("prev", EVENT, "eu") == expected
    copy = dataclasses.replace(EVENT)
    assert event_hash("prev", copy, "eu") == expected


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    shifted = dataclasses.replace(EVENT, at=EVENT.at.astimezone(timezone(timedelta(hours=-5))))
    assert event_hash("", shifted, "eu") == event_hash("", EVENT, "eu")


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        event_hash("", dataclasses.replace(EVENT, at=datetime(2025, 3, 1)), "eu")


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_hash_changes_with_any_field(field: str) -> None:
    changed = dataclasses.replace(EVENT, **{field: OTHER_VALUES[field]})
    assert event_hash("", changed, "eu") != event_hash("", EVENT, "eu")


def test_hash_changes_with_region_and_prev_hash() -> None:
    assert event_hash("", EVENT, "us") != event_hash("", EVENT, "eu")
    assert event_hash("a" * 64, EVENT, "eu") != event_hash("b" * 64, EVENT, "eu")


def test_each_hash_links_to_its_predecessor() -> None:
    events = [dataclasses.replace(EVENT, seq=seq) for seq in (1, 2, 3)]
    hashes = []
    prev = FIRST_PREV_HASH
    for event in events:
        prev = event_hash(prev, event, "eu")
        hashes.append(prev)
    # Changing the first event changes every later hash.
    edited = dataclasses.replace(events[0], message="edited")
    prev = FIRST_PREV_HASH
    for event, original in zip([edited, *events[1:]], hashes, strict=True):
        prev = event_hash(prev, event, "eu")
        assert prev != original
    assert len(set(hashes)) == 3
    assert FIRST_PREV_HASH == ""


def test_stream_names() -> None:
    assert stream_name("Run", "team-a", "demo", "0b7c") == "run/0b7c"
    assert stream_name("Agent", "team-a", "coder", "u1") == "agent/team-a/coder"
    assert stream_name("Template", "team-a", "ship", "u2") == "template/team-a/ship"
    with pytest.raises(ValueError, match="no audit stream"):
        stream_name("Job", "team-a", "x", "u3")


KEY = AuditKey("k1", b"k" * 32)


def test_a_keyed_hash_is_hmac_sha256_of_the_same_bytes() -> None:
    message = b"prev\n" + canonical(EVENT, "eu")
    expected = hmac.new(KEY.secret, message, hashlib.sha256).hexdigest()
    assert event_hash("prev", EVENT, "eu", KEY) == expected
    assert event_hash("prev", EVENT, "eu", KEY) != event_hash("prev", EVENT, "eu")
    assert event_hash("prev", EVENT, "eu", AuditKey("k2", b"j" * 32)) != expected


def test_a_checkpoint_signs_canonical_json_of_the_head_after_a_prefix() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    signed = sign_checkpoint(KEY, "eu", "run/0b7c", 7, "ab" * 32, at)
    message = (
        b"nofx-checkpoint/v1\n"
        b'{"at":"2026-01-02T03:04:05.000006Z","hash":"' + b"ab" * 32 + b'","region":"eu",'
        b'"seq":7,"stream":"run/0b7c"}'
    )
    assert checkpoint_message("eu", "run/0b7c", 7, "ab" * 32, at) == message
    assert signed == Checkpoint(
        "eu", "run/0b7c", 7, "ab" * 32, at, "k1",
        hmac.new(KEY.secret, message, hashlib.sha256).hexdigest(),
    )  # fmt: skip
    assert checkpoint_signed_by(signed, KEY)
    assert not checkpoint_signed_by(signed, AuditKey("k1", b"x" * 32))


@pytest.mark.parametrize(
    "change", [{"region": "us"}, {"stream": "run/ffff"}, {"seq": 8}, {"hash": "cd" * 32},
               {"at": datetime(2026, 1, 2, tzinfo=UTC)}, {"mac": "00" * 32}],
)  # fmt: skip
def test_a_checkpoint_with_any_field_changed_no_longer_verifies(change: dict[str, Any]) -> None:
    signed = sign_checkpoint(KEY, "eu", "run/0b7c", 7, "ab" * 32, datetime(2026, 1, 1, tzinfo=UTC))
    assert not checkpoint_signed_by(dataclasses.replace(signed, **change), KEY)


def test_no_row_message_can_pass_for_a_checkpoint() -> None:
    # A row's signed bytes start with a hex hash (or nothing) and a newline, never the prefix.
    assert not (FIRST_PREV_HASH + "\n").encode().startswith(CHECKPOINT_PREFIX)
    assert CHECKPOINT_PREFIX.startswith(b"nofx-checkpoint/")
