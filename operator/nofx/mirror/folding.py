"""Entries already in Postgres but still in their Run's outbox, and when the writer must remove
them itself.

Removing written entries from a Run's status is an API write. The reconciler makes a status
write at every step of a Run anyway, so it drops the entries stored by then in that same write
(it asks stored_keys()). The writer acknowledges by itself only when no such write may come
soon: the Run finished or is being deleted, many entries wait, or they waited ACK_AFTER seconds.
Memory only: after a restart the entries are written again, which Postgres takes as a no-op.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.mirror import outbox
from nofx.mirror.run_body import RunKey, pending

EntryKey = tuple[Any, ...]
# Seconds a stored entry of a running Run waits for the reconciler's next write. Longer than
# most steps, so a Run costs no acknowledgement of its own until it ends; a Run that waits
# (an approval, a step of many minutes) gets its outbox emptied meanwhile.
ACK_AFTER = 300.0
ACK_NOW_ENTRIES = 64  # stored entries of one Run that are acknowledged at once


@dataclass
class _Stored:
    uid: str
    # The latest written body, as the writer holds it (run_body.mirrored_part: no pinned specs,
    # no steps): its resourceVersion guards the removal, and a failed removal writes it again.
    body: dict[str, Any]
    keys: set[EntryKey] = field(default_factory=set)
    due: float = 0.0


class StoredEntries:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[RunKey, _Stored] = {}

    def keys(self, key: RunKey, uid: str) -> set[EntryKey]:
        """What the Run's next status write may drop from its outbox."""
        with self._lock:
            stored = self._runs.get(key)
            return set(stored.keys) if stored and stored.uid == uid else set()

    def unstored(self, key: RunKey, body: dict[str, Any]) -> dict[str, Any]:
        """The body with only the outbox entries that are not in Postgres yet."""
        keys = self.keys(key, body["metadata"]["uid"])
        if not keys:
            return body
        status = body.get("status") or {}
        audit = status.get("audit") or {}
        left = [entry for entry in pending(body) if outbox.entry_key(entry) not in keys]
        return {**body, "status": {**status, "audit": {**audit, "pending": left}}}

    def written(self, key: RunKey, body: dict[str, Any]) -> set[EntryKey] | None:
        """Records the entries of a written body. Returns every stored key of the Run if the
        writer must remove them now, None if the reconciler's next write may do it."""
        uid = body["metadata"]["uid"]
        with self._lock:
            stored = self._runs.get(key)
            if stored is None or stored.uid != uid:
                stored = self._runs[key] = _Stored(uid, body, due=self._clock() + ACK_AFTER)
            stored.body = body
            stored.keys |= {outbox.entry_key(entry) for entry in pending(body)}
            if _ends(body) or len(stored.keys) >= ACK_NOW_ENTRIES:
                return set(stored.keys)
            return None

    def due(self) -> list[tuple[RunKey, dict[str, Any], set[EntryKey]]]:
        """Runs whose stored entries waited too long for the reconciler."""
        now = self._clock()
        with self._lock:
            return [
                (key, stored.body, set(stored.keys))
                for key, stored in self._runs.items()
                if stored.keys and stored.due <= now
            ]

    def removed(self, key: RunKey, uid: str, keys: set[EntryKey]) -> None:
        """These entries left the Run's outbox (the writer's or the reconciler's write)."""
        with self._lock:
            stored = self._runs.get(key)
            if stored is None or stored.uid != uid:
                return
            stored.keys -= keys
            if not stored.keys:
                del self._runs[key]


def _ends(body: dict[str, Any]) -> bool:
    """No status write of the reconciler may follow: the Run finished or is being deleted."""
    finished = (body.get("status") or {}).get("phase") in TERMINAL_RUN_PHASES
    return finished or bool(body["metadata"].get("deletionTimestamp"))
