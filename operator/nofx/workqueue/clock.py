"""Time for the delaying layer, passed in so that tests move it forward instead of sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Wall time and one-shot timers. Callbacks run on the event loop's thread."""

    def now(self) -> datetime: ...

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Cancellable: ...


class LoopClock:
    """Real time, timers on the running event loop (or the one given).

    A timer fires `late_by` after its time, never before it: the loop's timers may run a tick
    early and follow a monotonic clock, and a Run looked at just before its deadline would only
    ask for another look a few milliseconds later."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        late_by: timedelta = timedelta(milliseconds=50),
    ) -> None:
        self._loop = loop
        self._late_by = late_by.total_seconds()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Cancellable:
        loop = self._loop or asyncio.get_running_loop()
        delay = max(0.0, (when - self.now()).total_seconds()) + self._late_by
        return loop.call_later(delay, callback)


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
