"""Evidence bundles: DSSE signing, the Run Statement, and what offline verification catches."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nofx.evidence import bundle, dsse
from nofx.evidence.statement import canonical_json, sha256

KEY = Ed25519PrivateKey.generate()
RUN: dict[str, Any] = {
    "metadata": {"namespace": "team-a", "name": "release", "uid": "0123456789abcdef",
                 "annotations": {"nofx.dev/created-by": "alice"}},
    "spec": {"approvals": [{"step": "publish", "approvedBy": "bob"}]},
    "status": {
        "phase": "Succeeded", "account": "acme",
        "pinned": {
            "template": {"name": "release", "specHash": "t" * 64, "spec": {"parameters": [
                {"name": "version"}, {"name": "token", "secret": True}]}},
            "agents": {"coder": {"specHash": "a" * 64, "spec": {"image": "ghcr.io/x/coder:1"}}},
            "parameters": {"version": "1.4.0", "token": "hunter2"},
        },
        "steps": [{"name": "build", "phase": "Succeeded"},
                  {"name": "publish", "phase": "Succeeded"}],
        "usage": {"wallSeconds": 2.0, "cost": "0.01", "currency": "USD"},
    },
}  # fmt: skip


def rows(*steps: tuple[str, str]) -> list[dict[str, Any]]:
    out, previous = [], ""
    for seq, (reason, step) in enumerate(steps, start=1):
        digest = sha256(f"{previous}{seq}".encode())
        out.append({"stream": "run/0123456789abcdef", "seq": seq, "reason": reason, "step": step,
                    "item_index": None, "actor": "bob" if step == "publish" else "nofx-operator",
                    "prev_hash": previous, "hash": digest})  # fmt: skip
        previous = digest
    return out


AUDIT = rows(("StepStarted", "build"), ("StepStarted", "publish"), ("RunSucceeded", ""))
USAGE = [{"step": "build", "item_index": None, "attempt": 1, "job_name": "release-build-1",
          "agent": "coder", "outcome": "Succeeded", "cost": "0.01", "currency": "USD"}]  # fmt: skip


def written(tmp_path: Path) -> Path:
    evidence = bundle.RunEvidence(RUN, AUDIT, USAGE, [])
    return bundle.write(evidence, KEY, tmp_path)


def statement(folder: Path) -> dict[str, Any]:
    envelope = json.loads((folder / bundle.STATEMENT_FILE).read_text())
    return json.loads(dsse.open_envelope(envelope, KEY.public_key()))


def test_the_signature_covers_the_payload_type_and_the_payload() -> None:
    envelope = dsse.sign(b'{"a": 1}', KEY)
    assert dsse.open_envelope(envelope, KEY.public_key()) == b'{"a": 1}'
    assert dsse.pae("t", b"xy") == b"DSSEv1 1 t 2 xy"
    with pytest.raises(dsse.BadEnvelope):
        dsse.open_envelope({**envelope, "payloadType": "text/plain"}, KEY.public_key())
    with pytest.raises(dsse.BadEnvelope, match="no signature verifies"):
        dsse.open_envelope(envelope, Ed25519PrivateKey.generate().public_key())


def test_the_statement_records_what_ran_who_approved_and_hides_secret_parameters(
    tmp_path: Path,
) -> None:
    folder = written(tmp_path)
    assert folder == tmp_path / "team-a" / "release-01234567"
    found = statement(folder)
    assert found["_type"] == "https://in-toto.io/Statement/v1"
    audit_digest = sha256((folder / bundle.AUDIT_FILE).read_bytes())
    assert found["subject"][0]["digest"] == {"sha256": audit_digest}
    predicate = found["predicate"]
    assert predicate["run"]["createdBy"] == "alice" and predicate["run"]["account"] == "acme"
    assert predicate["agents"] == [
        {"name": "coder", "specHash": "a" * 64, "image": "ghcr.io/x/coder:1"}
    ]
    assert predicate["parameters"]["version"] == {
        "sha256": sha256(canonical_json("1.4.0")),
        "value": "1.4.0",
    }
    assert predicate["parameters"]["token"] == {"sha256": sha256(canonical_json("hunter2"))}
    assert "hunter2" not in (folder / bundle.STATEMENT_FILE).read_text()
    assert predicate["approvals"] == [
        {"step": "publish", "approvedBy": "bob", "message": None, "stepStartedBy": "bob"}
    ]
    [build, publish] = predicate["steps"]
    assert [a["job"] for a in build["attempts"]] == ["release-build-1"] and not publish["attempts"]
    assert predicate["auditTrail"]["head"] == {"seq": 3, "hash": AUDIT[-1]["hash"]}
    assert bundle.verify(tmp_path, KEY.public_key()) == (1, [])


def tamper(folder: Path, edit: Any) -> None:
    path = folder / bundle.AUDIT_FILE
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


@pytest.mark.parametrize(
    ("edit", "found"),
    [
        (lambda r: [{**r[0], "actor": "mallory"}, *r[1:]], "not the file the statement signed"),
        (lambda r: r[:-1], "not the file the statement signed"),  # the newest row deleted
    ],
)
def test_an_edited_or_shortened_trail_does_not_verify(
    tmp_path: Path, edit: Any, found: str
) -> None:
    tamper(written(tmp_path), edit)
    good, problems = bundle.verify(tmp_path, KEY.public_key())
    assert good == 0 and found in problems[0] and problems[0].startswith("team-a/release-")


def test_a_re_signed_statement_over_a_broken_chain_still_fails(tmp_path: Path) -> None:
    """Whoever holds the signing key cannot make a trail with a hole in it verify."""
    holed = [AUDIT[0], AUDIT[2]]
    bundle.write(bundle.RunEvidence(RUN, holed, USAGE, []), KEY, tmp_path)
    assert bundle.verify(tmp_path, KEY.public_key())[1] == [
        "team-a/release-01234567: row seq 3 where 2 was expected"
    ]


def test_a_swapped_statement_or_another_key_is_refused(tmp_path: Path) -> None:
    folder = written(tmp_path)
    envelope = json.loads((folder / bundle.STATEMENT_FILE).read_text())
    forged = statement(folder)
    forged["predicate"]["approvals"][0]["approvedBy"] = "the-cto"
    envelope["payload"] = base64.b64encode(json.dumps(forged).encode()).decode()
    (folder / bundle.STATEMENT_FILE).write_text(json.dumps(envelope))
    assert "the statement does not verify" in bundle.verify(tmp_path, KEY.public_key())[1][0]
    other = Ed25519PrivateKey.generate().public_key()
    assert "no signature verifies" in bundle.verify(tmp_path, other)[1][0]


def test_an_attempts_token_cost_is_in_the_statement_beside_its_wall_time_cost(
    tmp_path: Path,
) -> None:
    metered = [{**USAGE[0], "token_cost": Decimal("0.0075")}]
    folder = bundle.write(bundle.RunEvidence(RUN, AUDIT, metered, []), KEY, tmp_path)
    [attempt] = statement(folder)["predicate"]["steps"][0]["attempts"]
    assert (attempt["cost"], attempt["tokenCost"]) == ("0.01", "0.0075")
    [plain] = statement(written(tmp_path / "plain"))["predicate"]["steps"][0]["attempts"]
    assert "tokenCost" not in plain
