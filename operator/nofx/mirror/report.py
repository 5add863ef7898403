"""What the mirror tells people about an object whose entries Postgres refused: a Warning Event
and a `Mirrored` condition on the object itself, where `kubectl describe` shows them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nofx.api.common import GROUP, VERSION
from nofx.kube import Kube

CONDITION = "Mirrored"
REJECTED = "MirrorRejected"
MESSAGE_LIMIT = 1000


@dataclass(frozen=True)
class Target:
    """A Run, Agent or Template the mirror reports on."""

    kind: str
    namespace: str
    name: str
    uid: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def plural(self) -> str:
        return self.kind.lower() + "s"


def rejected(kube: Kube, target: Target, problem: str) -> None:
    message = (
        f"Postgres refused this {target.kind}'s audit entries; they stay pending and are retried:"
        f" {problem}"
    )[:MESSAGE_LIMIT]
    involved = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": target.kind,
        "namespace": target.namespace,
        "name": target.name,
        "uid": target.uid,
    }
    kube.create_event(involved, "Warning", REJECTED, message)
    kube.set_condition(
        target.plural, target.namespace, target.name, CONDITION, "False", REJECTED, message
    )


def mirrored(kube: Kube, target: Target) -> None:
    kube.set_condition(
        target.plural, target.namespace, target.name, CONDITION, "True", "Mirrored",
        "every audit entry is in Postgres",
    )  # fmt: skip


def was_rejected(body: Mapping[str, Any]) -> bool:
    """The object says its entries were refused (perhaps by an operator that since restarted)."""
    conditions = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == CONDITION and c.get("status") == "False" for c in conditions)
