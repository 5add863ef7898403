"""A Clock for the work queue's tests (nofx.workqueue.clock.Clock): time stands still until the
test moves it."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nofx.workqueue.clock import Cancellable


@dataclass(order=True)
class _FakeTimer:
    when: datetime
    order: int  # ties fire in the order they were set
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A clock for tests: time stands still until advance(), which fires the timers that fell
    due, earliest first (including any they set that are due within the same advance)."""

    def __init__(self, start: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> None:
        self._now = start
        self._timers: list[_FakeTimer] = []
        self._order = itertools.count()

    def now(self) -> datetime:
        return self._now

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Cancellable:
        timer = _FakeTimer(when, next(self._order), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, by: timedelta | float = 0.0) -> None:
        seconds = by.total_seconds() if isinstance(by, timedelta) else by
        until = self._now + timedelta(seconds=seconds)
        while self._timers and self._timers[0].when <= until:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, timer.when)
            timer.callback()
        self._now = until

    def pending(self) -> list[datetime]:
        """When the timers still armed will fire, earliest first."""
        return sorted(timer.when for timer in self._timers if not timer.cancelled)
