"""Labels the operator puts on what it creates, so a person (and the operator's indexes) can find
a Run's Jobs, Pods and child Runs; and label values made from names that may not be one."""

from __future__ import annotations

import hashlib
import re

from nofx.api import accounts, queues

RUN_LABEL = "nofx.dev/run"
STEP_LABEL = "nofx.dev/step"
ATTEMPT_LABEL = "nofx.dev/attempt"
AGENT_LABEL = "nofx.dev/agent"
ACCOUNT_LABEL = accounts.ACCOUNT_LABEL  # the same label as on namespaces
INDEX_LABEL = "nofx.dev/index"
PARENT_LABEL = "nofx.dev/parent-run"
ROOT_LABEL = "nofx.dev/root-run"  # uid of the Run at the root of a tree of child Runs
DEPTH_LABEL = "nofx.dev/depth"  # how many parents a child Run has
QUEUE_LABEL = queues.KUEUE_QUEUE_LABEL  # the LocalQueue that admits a step Job
MANAGED_BY = {"app.kubernetes.io/managed-by": "nofx-operator"}
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """text itself when it is a valid label value; else a readable prefix and a hash of it
    (names may be 253 characters long, accounts may contain ':', '/' or '@')."""
    if len(text) <= 63 and LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    prefix = re.sub(r"[^-A-Za-z0-9_.]", "-", text)[:52].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest
