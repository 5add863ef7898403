"""Names of what a Run creates, deterministic per step attempt: a restarted operator finds (or
gets a 409 for) the same Job or child Run instead of starting the work twice."""

from __future__ import annotations

import hashlib

MAX_NAME = 63  # Job names end up in the job-name label of their Pods


def job_name(run_name: str, run_uid: str, step: str, index: int | None, attempt: int) -> str:
    """Deterministic per step attempt, so a restarted operator finds (or re-creates with a
    409) the same Job instead of starting the attempt twice. The hash of the Run's uid keeps a
    re-created Run of the same name apart from the Jobs of its predecessor."""
    key = f"{run_uid}/{step}/{'' if index is None else index}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:6]
    item = "" if index is None else f"-{index}"
    tail = f"-{step}{item}-{digest}-{attempt}"
    head = run_name[: MAX_NAME - len(tail)].rstrip("-.")
    return head + tail


def child_run_name(parent: str, parent_uid: str, step: str, index: int | None) -> str:
    """Deterministic like Job names, so a restarted operator never starts a child twice."""
    return job_name(parent, parent_uid, step, index, 0).rsplit("-", 1)[0]
