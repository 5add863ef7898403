"""Objects the mirror tries again later, each on its own capped exponential backoff: one that
keeps failing is neither retried in a hot loop nor forgotten."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")


@dataclass
class _Entry(Generic[Item]):
    item: Item
    failures: int
    due: float


class Retries(Generic[Key, Item]):
    """Not thread-safe: the writer calls it under its lock."""

    def __init__(
        self, first: float, cap: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.first = first
        self.cap = cap
        self.clock = clock
        self._entries: dict[Key, _Entry[Item]] = {}

    def schedule(self, key: Key, item: Item) -> int:
        """Another failure of this object: try it again after first, 2 x first ... up to cap
        seconds. Returns how many failures in a row it has had."""
        previous = self._entries.get(key)
        failures = previous.failures + 1 if previous else 1
        delay = min(self.cap, self.first * 2 ** (failures - 1))
        self._entries[key] = _Entry(item, failures, self.clock() + delay)
        return failures

    def update(self, key: Key, item: Item) -> bool:
        """A newer item for an object already waiting (its time stays); False if none waits."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        entry.item = item
        return True

    def due(self) -> list[tuple[Key, Item]]:
        """Those whose time has come; they stay until scheduled again or released."""
        now = self.clock()
        return [(key, entry.item) for key, entry in self._entries.items() if entry.due <= now]

    def release(self, key: Key) -> None:
        self._entries.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[Key]:
        return list(self._entries)

    def items(self) -> list[Item]:
        return [entry.item for entry in self._entries.values()]
