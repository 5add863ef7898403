"""Who created an object and who last changed its spec, as the API server authenticated them.

The nofx-identity MutatingAdmissionPolicy (policies/identity.yaml) stamps these annotations on
every create and spec change of a Run, Agent or Template and overwrites whatever a client sent.
On a cluster without that policy they are absent, and the audit trail says "unknown" rather
than guess from field managers (which name a client program, not a person)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CREATED_BY = "nofx.dev/created-by"
CHANGED_BY = "nofx.dev/changed-by"


def created_by(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("annotations") or {}).get(CREATED_BY) or None


def changed_by(metadata: Mapping[str, Any]) -> str | None:
    return (metadata.get("annotations") or {}).get(CHANGED_BY) or None
