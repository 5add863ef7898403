"""The rate-limiting layer: how long a key waits after failing, growing while it keeps failing."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Retry:
    failures: int  # in a row, the one just counted included
    delay: timedelta  # before the next try


class Backoff(Generic[K]):
    """Capped exponential backoff per key: `first`, doubling with each failure in a row, never
    more than `cap`. Counts only; the caller decides what a number of failures means (show it,
    give up). Thread-safe: a failure may be counted in the thread that reconciled."""

    def __init__(
        self,
        first: timedelta = timedelta(seconds=0.5),
        cap: timedelta = timedelta(seconds=30),
    ) -> None:
        self.first, self.cap = first, cap
        self._failures: dict[K, int] = {}
        self._lock = threading.Lock()

    def when(self, key: K) -> Retry:
        """Counts one more failure of the key and says how long to wait before trying again."""
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        # The exponent stops growing long after the cap is reached: no huge numbers.
        delay = self.first * 2 ** min(failures - 1, 32)
        return Retry(failures, min(delay, self.cap))

    def forget(self, key: K) -> None:
        """The key succeeded (or is gone): its next failure waits `first` again."""
        with self._lock:
            self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        with self._lock:
            return self._failures.get(key, 0)
