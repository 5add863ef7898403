"""What a worker does with a key, as controller-runtime's reconcileHandler: a failure is
retried after the key's backoff, a success forgets the backoff and sets the key's timer to the
time its result asks for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from nofx.workqueue.backoff import Backoff, Retry
from nofx.workqueue.clock import LoopClock
from nofx.workqueue.delays import Timers, When
from nofx.workqueue.queue import ShutDown, WorkQueue

log = logging.getLogger("nofx.workqueue")

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")


@dataclass(frozen=True)
class Result:
    """What a reconcile asks for: another look at a moment or after a delay, or None (no
    timer: the next event will do)."""

    requeue_after: When = None


async def worker(
    queue: WorkQueue[K, P],
    timers: Timers[K],
    backoff: Backoff[K],
    reconcile: Callable[[K, P | None], Awaitable[Result]],
    on_error: Callable[[K, Exception, Retry], Awaitable[None]] | None = None,
) -> None:
    """Handles keys one after the other until the queue shuts down. Start several as tasks:
    different keys are then handled at once, a key never twice at once."""
    while True:
        try:
            key, payload = await queue.get()
        except ShutDown:
            return
        try:
            await handle(key, payload, timers, backoff, reconcile, on_error)
        finally:
            queue.done(key)


async def handle(
    key: K,
    payload: P | None,
    timers: Timers[K],
    backoff: Backoff[K],
    reconcile: Callable[[K, P | None], Awaitable[Result]],
    on_error: Callable[[K, Exception, Retry], Awaitable[None]] | None = None,
) -> None:
    """One reconcile of one key and what its outcome means for the key's timer and backoff."""
    try:
        result = await reconcile(key, payload)
    except Exception as error:
        retry = backoff.when(key)
        # Before on_error: what it decides (give up on the object: no timer) must come last.
        timers.schedule(key, retry.delay)
        if on_error is not None:
            try:
                await on_error(key, error, retry)
            except Exception:
                log.exception("could not handle a failed reconcile", extra={"key": key})
        return
    backoff.forget(key)
    timers.schedule(key, result.requeue_after)


class WorkerPool(Generic[K, P]):
    """A reconciler's queue with its timers and backoff, and the worker tasks that drain it:
    what the Run and Schedule reconcilers each start at the operator's startup and stop at
    its cleanup.

    A paused pool (a standby replica, see nofx.peering) reconciles nothing: keys that come up
    meanwhile, from events or timers, are held without their timers and come back when it
    resumes."""

    def __init__(
        self,
        reconcile: Callable[[K, P | None], Awaitable[Result]],
        on_error: Callable[[K, Exception, Retry], Awaitable[None]] | None = None,
    ) -> None:
        self.queue: WorkQueue[K, P] = WorkQueue()
        self.backoff: Backoff[K] = Backoff()
        # On the loop's thread only: a timer that falls due adds its key.
        self.timers: Timers[K] = Timers(LoopClock(), self.queue.add)
        self._reconcile, self._on_error = reconcile, on_error
        self._tasks: list[asyncio.Task[None]] = []
        self.paused = False
        self._held: set[K] = set()

    def start(self, workers: int) -> None:
        """Starts the workers on the running loop."""
        self._tasks = [
            asyncio.create_task(
                worker(self.queue, self.timers, self.backoff, self._unless_paused, self._on_error)
            )
            for _ in range(workers)
        ]

    def set_paused(self, paused: bool) -> None:
        """On the loop's thread. Resuming adds every key held meanwhile."""
        self.paused = paused
        if not paused:
            for key in self._held:
                self.queue.add(key)
            self._held.clear()

    async def _unless_paused(self, key: K, payload: P | None) -> Result:
        if self.paused:
            self._held.add(key)
            return Result()  # no timer either: the key comes back on resuming
        return await self._reconcile(key, payload)

    async def stop(self) -> None:
        """No more timers; keys still waiting are dropped, the passes under way finish."""
        self.timers.close()
        await self.queue.drain(drop_waiting=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def forget(self, key: K) -> None:
        """An object that is gone: no retry, no timer."""
        self.backoff.forget(key)
        self.timers.cancel(key)
        self._held.discard(key)
