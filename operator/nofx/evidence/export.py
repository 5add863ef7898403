"""`nofx evidence export`: which Runs, and what the cluster and the mirror hold of each. A Run's
pinned snapshot (spec hashes, images, parameters, approvals) is read from the cluster, so export
a Run before its ttlSecondsAfterFinished deletes it; its audit trail stays in Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.evidence import bundle
from nofx.kube import Kube
from nofx.mirror.chain import stream_name
from nofx.mirror.store import Store


def export(
    kube: Kube,
    store: Store,
    runs: list[tuple[str, str, str | None]],
    key: Ed25519PrivateKey,
    out: Path,
) -> Iterator[str]:
    """Writes the evidence of each finished Run (uid None: whichever has that name now);
    yields a line per Run saying what became of it."""
    for namespace, name, uid in runs:
        run = kube.get("runs", namespace, name)
        if run is None or (uid is not None and run["metadata"]["uid"] != uid):
            yield f"skipped {namespace}/{name}: deleted from the cluster (its trail: nofx audit)"
            continue
        if (run.get("status") or {}).get("phase") not in TERMINAL_RUN_PHASES:
            yield f"skipped {namespace}/{name}: it has not finished"
            continue
        uid = run["metadata"]["uid"]
        stream = stream_name("Run", namespace, name, uid)
        rows = [event for event in store.timeline(namespace, name) if event["stream"] == stream]
        checked = store.verify(stream)
        verification = [*checked.problems, *(f"note: {note}" for note in checked.notes())]
        if not checked.problems:
            verification.insert(0, f"the chain verifies: {checked.summary()}")
        evidence = bundle.RunEvidence(run, rows, store.run_usage(uid), verification)
        yield f"wrote {bundle.write(evidence, key, out)}"
