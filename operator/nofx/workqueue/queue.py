"""The de-duplicating layer: a key is waiting at most once and handled by one worker at a time.

As client-go's workqueue: `dirty` holds the keys that need handling (with their payload),
`processing` the keys a worker holds. A key added while it is processed is only marked dirty;
done() queues it again, so it is handled once more, after, with the freshest payload."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
P = TypeVar("P")


class ShutDown(Exception):
    """get() on a queue that was shut down and has nothing left to hand out."""


class WorkQueue(Generic[K, P]):
    """FIFO of keys, each with an optional payload. Use it from the event loop's thread only;
    a worker thread adds through loop.call_soon_threadsafe(queue.add, key)."""

    def __init__(self) -> None:
        self._queue: deque[K] = deque()  # the dirty keys no worker holds, in order of arrival
        self._dirty: dict[K, P | None] = {}
        self._processing: set[K] = set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._drained: list[asyncio.Future[None]] = []
        self._shutting_down = False

    def add(self, key: K, payload: P | None = None) -> None:
        """The key needs handling. Its payload replaces the one waiting, except that None ("no
        news, read it afresh") leaves a waiting payload alone. Ignored once shut down."""
        if self._shutting_down:
            return
        if key in self._dirty:
            if payload is not None:
                self._dirty[key] = payload
            return
        self._dirty[key] = payload
        if key not in self._processing:
            self._queue.append(key)
            self._wake_a_getter()

    async def get(self) -> tuple[K, P | None]:
        """The next key and its payload, waiting for one if need be. The caller holds the key
        until done(key). Raises ShutDown once shut down and no key is waiting."""
        while not self._queue:
            if self._shutting_down:
                raise ShutDown
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                elif self._queue:
                    self._wake_a_getter()  # woken, then cancelled: pass the wake-up on
                raise
        key = self._queue.popleft()
        self._processing.add(key)
        return key, self._dirty.pop(key)

    def done(self, key: K) -> None:
        """The worker let go of the key: if it was added meanwhile, it waits again."""
        if key not in self._processing:
            return
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_a_getter()
        else:
            self._resolve_drained()

    def shut_down(self, *, drop_waiting: bool = False) -> None:
        """No more adds. Getters still receive the keys waiting (none if drop_waiting), then
        ShutDown. Keys being processed finish; with drop_waiting they do not come back."""
        self._shutting_down = True
        if drop_waiting:
            self._queue.clear()
            self._dirty.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
        self._resolve_drained()

    async def drain(self, *, drop_waiting: bool = False) -> None:
        """Shuts down and returns once no key is waiting or processed (workers must still run,
        as with client-go's ShutDownWithDrain)."""
        self.shut_down(drop_waiting=drop_waiting)
        if self._queue or self._processing:
            drained = asyncio.get_running_loop().create_future()
            self._drained.append(drained)
            await drained

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def is_processing(self, key: K) -> bool:
        return key in self._processing

    def __len__(self) -> int:
        """How many keys wait for a worker (not counting the ones being processed)."""
        return len(self._queue)

    def _wake_a_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def _resolve_drained(self) -> None:
        if self._queue or self._processing:
            return
        for drained in self._drained:
            if not drained.done():
                drained.set_result(None)
        self._drained.clear()
