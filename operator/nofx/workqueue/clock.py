"""Time for the delaying layer, passed in so that tests move it forward instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
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
