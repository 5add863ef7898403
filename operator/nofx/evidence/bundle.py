"""An evidence bundle on disk: a folder per Run (`NAMESPACE/NAME-UID8/`) holding the Run's audit
rows (`audit.json`, the Statement's subject) and its signed Statement (`statement.dsse.json`).
`verify` checks it offline with the public key alone: the signature, the subject's digest, and
that the audit rows link into one chain ending where the Statement says."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nofx.evidence import dsse
from nofx.evidence.statement import PREDICATE_TYPE, STATEMENT_TYPE, run_statement, sha256
from nofx.mirror.chain import FIRST_PREV_HASH

AUDIT_FILE = "audit.json"
STATEMENT_FILE = "statement.dsse.json"


@dataclass(frozen=True)
class RunEvidence:
    """What the cluster and the mirror hold of one Run."""

    run: Mapping[str, Any]  # as the API server returns it
    audit_rows: Sequence[Mapping[str, Any]]  # its stream, in seq order
    usage_rows: Sequence[Mapping[str, Any]]
    verification: Sequence[str]  # what checking the Run's stream in the mirror found


def write(evidence: RunEvidence, key: Ed25519PrivateKey, out: Path) -> Path:
    """Writes one Run's folder; returns it."""
    metadata = evidence.run["metadata"]
    folder = out / metadata["namespace"] / f"{metadata['name']}-{metadata['uid'][:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    audit = json.dumps(list(evidence.audit_rows), indent=1, sort_keys=True, default=str).encode()
    (folder / AUDIT_FILE).write_bytes(audit)
    statement = run_statement(
        evidence.run, audit, evidence.audit_rows, evidence.usage_rows, evidence.verification
    )
    payload = json.dumps(statement, sort_keys=True, default=str).encode()
    envelope = dsse.sign(payload, key)
    (folder / STATEMENT_FILE).write_text(json.dumps(envelope, indent=1) + "\n")
    return folder


def verify(bundle: Path, key: Ed25519PublicKey) -> tuple[int, list[str]]:
    """(Runs whose evidence holds, problems found), each problem naming its folder."""
    good, problems = 0, []
    folders = sorted(path.parent for path in bundle.rglob(STATEMENT_FILE))
    if not folders:
        return 0, [f"{bundle}: no {STATEMENT_FILE} found"]
    for folder in folders:
        found = _verify_run(folder, key)
        problems += [f"{folder.relative_to(bundle)}: {problem}" for problem in found]
        good += not found
    return good, problems


def _verify_run(folder: Path, key: Ed25519PublicKey) -> list[str]:
    try:
        envelope = json.loads((folder / STATEMENT_FILE).read_text())
        statement = json.loads(dsse.open_envelope(envelope, key))
    except (ValueError, dsse.BadEnvelope) as error:
        return [f"the statement does not verify: {error}"]
    if (statement.get("_type"), statement.get("predicateType")) != (STATEMENT_TYPE, PREDICATE_TYPE):
        return ["not a NOFX Run statement"]
    try:
        audit = (folder / AUDIT_FILE).read_bytes()
    except OSError as error:
        return [f"{AUDIT_FILE} is missing: {error}"]
    if sha256(audit) != statement["subject"][0]["digest"]["sha256"]:
        return [f"{AUDIT_FILE} is not the file the statement signed (its digest differs)"]
    trail = statement["predicate"]["auditTrail"]
    return list(_chain_problems(json.loads(audit), trail))


def _chain_problems(rows: list[dict[str, Any]], trail: Mapping[str, Any]) -> Iterable[str]:
    """The rows link into one chain from its start, ending at the head the statement names.
    (Recomputing each hash needs the mirror's key, which an auditor does not hold: the
    signature over the file stands for them.)"""
    previous = FIRST_PREV_HASH
    for expected_seq, row in enumerate(rows, start=1):
        if row["seq"] != expected_seq:
            yield f"row seq {row['seq']} where {expected_seq} was expected"
            return
        if row["prev_hash"] != previous:
            yield f"row seq {row['seq']} does not link to the row before it"
            return
        previous = row["hash"]
    head = {"seq": rows[-1]["seq"], "hash": rows[-1]["hash"]} if rows else None
    if head != trail["head"] or len(rows) != trail["rows"]:
        yield "the audit rows do not end where the statement says"
