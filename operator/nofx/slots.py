"""Free slots of Agents with maxConcurrentSteps, across all Runs.

The step Job watch tells which Jobs of an Agent are unfinished, but a reconcile decides from a copy
of it taken when it was triggered, which may predate a Job another reconcile just created. So
every Job the operator creates also holds a reservation until its watch says it finished: the
count is the union of both, and a stale copy can only make a reconcile wait, never overbook.
Only one operator replica is active (peering), so in-memory state is enough.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

# A reservation whose Job was never created (the create failed) frees its slot after this;
# by then the step Job watch knows every Job that does exist.
RESERVATION_SECONDS = 300.0


class AgentSlots:
    """Keyed by namespace and the Agent's label value (what a Job's nofx.dev/agent label says)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held across counting, deciding and reserving
        self._reserved: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

    def free(self, namespace: str, agent: str, limit: int, active: set[str] | None) -> int:
        """Slots left: the limit minus Jobs the step Job watch knows as unfinished and Jobs reserved
        but not yet seen there. Call with the lock held."""
        now = time.monotonic()
        reserved = self._reserved[(namespace, agent)]
        for job, expires in list(reserved.items()):
            if expires < now:
                del reserved[job]
        return limit - len((active or set()) | set(reserved))

    def reserve(self, namespace: str, agent: str, job: str) -> None:
        """Call with the lock held, for each Job a decision is about to create."""
        self._reserved[(namespace, agent)][job] = time.monotonic() + RESERVATION_SECONDS

    def release(self, namespace: str, agent: str | None, job: str) -> None:
        """The watch saw the Job finish or go away."""
        if agent is None:
            return
        with self.lock:
            self._reserved.get((namespace, agent), {}).pop(job, None)
