"""Entries already in Postgres but still in their Run's outbox, and when the writer must remove
them itself.

Removing written entries from a Run's status is an API write. The reconciler makes a status
write at every step of a Run anyway, so it drops the entries stored by then in that same write
(it asks stored_keys()). The writer acknowledges by itself only when no such write may come
soon: the Run finished or is being deleted, many entries wait, or they waited ACK_AFTER seconds.
Memory only: after a restart the entries are written again, which Postgres takes as a no-op.
"""

from __future__ import annotations

import heapq
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
# Late acknowledgements, at most this many a second, the longest waiting first: a burst of
# thousands of Runs that all wait (for approvals) would otherwise come due, and be written,
# in the same second five minutes later, and starve the API server and the reconciler.
LATE_ACKS_PER_SECOND = 10.0


@dataclass
class _Stored:
    uid: str
    # The latest written body, as the writer holds it (run_body.mirrored_part: no pinned specs,
    # no steps): its resourceVersion guards the removal, and a failed removal writes it again.
    # None once no stored entry waits in the outbox.
    body: dict[str, Any] | None
    keys: set[EntryKey] = field(default_factory=set)  # in Postgres and still in the outbox
    # What is in Postgres and already left the outbox, so that an older body of the Run (a
    # watch event behind the reconciler's write) does not hand those entries over again:
    # events through this sequence number (a Run's events are stored in order), usage by key.
    events_through: int = 0
    usage_gone: set[EntryKey] = field(default_factory=set)
    due: float = 0.0


class StoredEntries:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[RunKey, _Stored] = {}
        # (due, Run) of Runs whose stored entries wait, soonest first; an item whose Run has
        # since been acknowledged or got a later due is skipped when it comes up.
        self._waiting: list[tuple[float, RunKey]] = []
        self._late_allowance = LATE_ACKS_PER_SECOND  # a token bucket of late acknowledgements
        self._late_refilled = clock()

    def keys(self, key: RunKey, uid: str) -> set[EntryKey]:
        """What the Run's next status write may drop from its outbox."""
        with self._lock:
            stored = self._runs.get(key)
            return set(stored.keys) if stored and stored.uid == uid else set()

    def unstored(self, key: RunKey, body: dict[str, Any]) -> dict[str, Any]:
        """The body with only the outbox entries that are not in Postgres yet."""
        with self._lock:
            stored = self._runs.get(key)
            if stored is None or stored.uid != body["metadata"]["uid"]:
                return body
            left = [entry for entry in pending(body) if not _is_stored(stored, entry)]
        status = body.get("status") or {}
        audit = status.get("audit") or {}
        return {**body, "status": {**status, "audit": {**audit, "pending": left}}}

    def written(self, key: RunKey, body: dict[str, Any]) -> set[EntryKey] | None:
        """Records the entries of a written body. Returns every stored key of the Run if the
        writer must remove them now, None if the reconciler's next write may do it."""
        uid = body["metadata"]["uid"]
        entries = pending(body)
        with self._lock:
            stored = self._runs.get(key)
            if stored is None or stored.uid != uid:
                stored = self._runs[key] = _Stored(uid, body)
            if not stored.keys:
                stored.due = self._clock() + ACK_AFTER
                heapq.heappush(self._waiting, (stored.due, key))
            stored.body = body
            stored.keys |= {outbox.entry_key(entry) for entry in entries}
            seqs = [entry["seq"] for entry in entries if entry["type"] == outbox.EVENT]
            stored.events_through = max([stored.events_through, *seqs])
            if _ends(body) or len(stored.keys) >= ACK_NOW_ENTRIES:
                return set(stored.keys)
            return None

    def due(self) -> list[tuple[RunKey, dict[str, Any], set[EntryKey]]]:
        """Runs whose stored entries waited too long for the reconciler, the longest waiting
        first, as many as the rate of late acknowledgements allows now: a heap, so that a pass
        does not look through every Run the writer tracks (thousands held for approvals)."""
        now = self._clock()
        with self._lock:
            self._late_allowance = min(
                LATE_ACKS_PER_SECOND,
                self._late_allowance + (now - self._late_refilled) * LATE_ACKS_PER_SECOND,
            )
            self._late_refilled = now
            taken: list[tuple[float, RunKey, dict[str, Any], set[EntryKey]]] = []
            while self._waiting and self._waiting[0][0] <= now:
                if len(taken) >= int(self._late_allowance):
                    break
                due, key = heapq.heappop(self._waiting)
                stored = self._runs.get(key)
                if stored and stored.keys and stored.body is not None and stored.due == due:
                    taken.append((due, key, stored.body, set(stored.keys)))
            for due, key, _, _ in taken:  # due again until the removal is recorded
                heapq.heappush(self._waiting, (due, key))
            self._late_allowance -= len(taken)
            return [(key, body, keys) for _, key, body, keys in taken]

    def removed(self, key: RunKey, uid: str, keys: set[EntryKey]) -> None:
        """These entries left the Run's outbox (the writer's or the reconciler's write)."""
        with self._lock:
            stored = self._runs.get(key)
            if stored is None or stored.uid != uid:
                return
            stored.keys -= keys
            stored.usage_gone |= {key for key in keys if key[0] == outbox.USAGE}
            if stored.keys:
                return
            if stored.body is not None and _ends(stored.body):
                del self._runs[key]  # nothing more to come
            else:
                stored.body = None


def _is_stored(stored: _Stored, entry: dict[str, Any]) -> bool:
    if entry["type"] == outbox.EVENT:
        return bool(entry["seq"] <= stored.events_through)
    entry_key = outbox.entry_key(entry)
    return entry_key in stored.keys or entry_key in stored.usage_gone


def _ends(body: dict[str, Any]) -> bool:
    """No status write of the reconciler may follow: the Run finished or is being deleted."""
    finished = (body.get("status") or {}).get("phase") in TERMINAL_RUN_PHASES
    return finished or bool(body["metadata"].get("deletionTimestamp"))
