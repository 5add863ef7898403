"""Runs waiting for something that is not a Run event: a Template or Agent to appear, or a free
slot of an Agent. The event that ends the wait wakes them."""

from __future__ import annotations

import threading
from collections import defaultdict

RunKey = tuple[str, str]  # (namespace, name)


class Waiters:
    """Runs waiting for something that is not a Run event: a Template or Agent to appear, or a
    free slot of an Agent. The event that ends the wait triggers them.

    A reconcile decides from a snapshot and registers as a waiter afterwards; if the awaited
    event came in between, nobody would wake it. So every release bumps a version, and add()
    tells the caller whether one happened since its snapshot: then it must look again.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_thing: dict[tuple[str, str, str], set[RunKey]] = defaultdict(set)
        self.version = 0

    def add(self, namespace: str, kind: str, name: str, run: RunKey, seen_version: int) -> bool:
        with self.lock:
            self.by_thing[(namespace, kind, name)].add(run)
            return self.version != seen_version

    def pop(self, namespace: str, kind: str, name: str) -> set[RunKey]:
        with self.lock:
            self.version += 1
            return self.by_thing.pop((namespace, kind, name), set())

    def pop_kind(self, namespace: str, kind: str) -> set[RunKey]:
        """Every Run of the namespace waiting for something of this kind (an Agent chosen by
        skills has no name to wait for)."""
        with self.lock:
            self.version += 1
            runs: set[RunKey] = set()
            for thing in [t for t in self.by_thing if t[0] == namespace and t[1] == kind]:
                runs |= self.by_thing.pop(thing)
            return runs

    def forget(self, run: RunKey) -> None:
        with self.lock:
            for waiting in self.by_thing.values():
                waiting.discard(run)
