"""Whether this replica is the active one, for the operator's own watches and timers.

Kopf's peering keeps one replica active: the others pause Kopf's watches and handlers. But the
step Job watch, reconcile retries and timeouts, and Schedules' timers are the operator's own,
and Kopf has no public hook to tell them. So they follow the same peering object, by the rule
Kopf documents and applies: a replica stands by while another live replica (seen within its
lifetime) has a higher priority, or the same one; and until its first look at the object.
Each replica's priority is random, and its identity is the one given to Kopf, so the two
readings of the object agree. A standby's reconcilers hold what comes up (WorkerPool) and
reconcile it when this replica becomes active.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from nofx.apiserver import ApiServer
from nofx.watching import Watch, Watching

log = logging.getLogger("nofx.peering")

PEERING_NAME = "nofx"


def own_identity() -> str:
    """The Pod's name when the chart gives it (as Kopf reads it), else host, pid and a nonce."""
    return (
        os.environ.get("POD_ID") or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    )


def blocking_peers(
    status: dict[str, Any], identity: str, priority: int, now: datetime
) -> list[str]:
    """The live peers, other than us, that make us stand by. status: the peering object's
    status, a map from each replica's identity to its priority, lifetime and lastseen."""
    blocking = []
    for peer, seen in status.items():
        if peer == identity or not isinstance(seen, dict):
            continue
        lastseen = seen.get("lastseen")
        last = datetime.fromisoformat(lastseen) if lastseen else now
        if last.tzinfo is None:
            last = last.replace(tzinfo=UTC)
        if last + timedelta(seconds=int(seen.get("lifetime", 60))) <= now:
            continue  # dead: it stopped without saying so
        if int(seen.get("priority", 0)) >= priority:
            blocking.append(peer)
    return blocking


class Peering(Watching):
    def __init__(
        self,
        server: ApiServer,
        identity: str,
        priority: int,
        namespaces: tuple[str, ...],
        on_change: Callable[[bool], None],
    ) -> None:
        self.identity, self.priority, self.on_change = identity, priority, on_change
        self._lock = threading.Lock()
        # Where the object lives (cluster-wide, or one per served namespace) → who blocks us
        # there; None: not seen yet.
        self._blocking: dict[str, list[str] | None] = {scope: None for scope in namespaces or ("",)}
        self.active: bool | None = None  # None: not decided yet (the first decision is told)
        query = {"fieldSelector": f"metadata.name={PEERING_NAME}"}
        self.watches = [
            Watch(server, _peerings_path(scope), query, self, "peering", scope)
            for scope in self._blocking
        ]

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        self.saw(scope, objects[0] if objects else None)

    def changed(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        # Deleted: Kopf keeps its last decision, and so does this.
        self.saw(scope, obj)

    def saw(self, scope: str, peering: dict[str, Any] | None) -> None:
        """The peering object of a scope as it is now (None: there is none)."""
        status = (peering or {}).get("status") or {}
        blocking = blocking_peers(status, self.identity, self.priority, datetime.now(UTC))
        with self._lock:
            self._blocking[scope] = blocking if peering is not None else None
            active = all(peers == [] for peers in self._blocking.values())
            changed, self.active = active != self.active, active
        if changed:
            others = sorted({p for peers in self._blocking.values() for p in peers or ()})
            log.info(
                "this replica is active" if active else "this replica stands by",
                extra={"identity": self.identity, "priority": self.priority, "blocking": others},
            )
            self.on_change(active)


def _peerings_path(namespace: str) -> str:
    if namespace:
        return f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings"
    return "/apis/kopf.dev/v1/clusterkopfpeerings"
