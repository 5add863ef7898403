"""The delaying layer: one timer per key that puts the key back on the queue when it is due."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from nofx.workqueue.clock import Cancellable, Clock

K = TypeVar("K", bound=Hashable)

When = datetime | timedelta | None  # a moment, a delay from now, or no timer


class Timers(Generic[K]):
    """At most one timer per key, set to the time its latest schedule() asked for.

    Unlike client-go's AddAfter, where the earliest of several times wins, the latest call
    replaces the timer, and None removes it: each reconcile sees the whole object, so its
    decision already knows every deadline still to come, and a timer a previous decision set
    (a retry after a failure, say) is no longer wanted. Call it on the event loop's thread;
    from a worker thread go through loop.call_soon_threadsafe."""

    def __init__(self, clock: Clock, on_due: Callable[[K], None]) -> None:
        self._clock = clock
        self._on_due = on_due  # typically WorkQueue.add
        self._timers: dict[K, tuple[datetime, Cancellable]] = {}
        self._closed = False

    def schedule(self, key: K, when: When) -> None:
        """The key comes back at `when` (now if it is past) instead of at any time set before;
        None: no timer for the key."""
        previous = self._timers.pop(key, None)
        if previous is not None:
            previous[1].cancel()
        if when is None or self._closed:
            return
        at = self._clock.now() + when if isinstance(when, timedelta) else when
        handle = self._clock.call_at(at, lambda: self._fire(key))
        self._timers[key] = (at, handle)

    def cancel(self, key: K) -> None:
        self.schedule(key, None)

    def due_at(self, key: K) -> datetime | None:
        timer = self._timers.get(key)
        return timer[0] if timer else None

    def close(self) -> None:
        """Cancels every timer; later schedules set none."""
        self._closed = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    def __len__(self) -> int:
        return len(self._timers)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self._on_due(key)
