"""The work queue as client-go tests its own: keys collapse, a key is never handled twice at
once, timers follow the latest schedule on a fake clock, backoff takes exact steps, and a
worker turns a reconcile's outcome into a timer and a backoff."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from nofx.workqueue import (
    Backoff,
    LoopClock,
    Result,
    Retry,
    ShutDown,
    Timers,
    WorkerPool,
    WorkQueue,
    handle,
    worker,
)
from tests.unit.fake_clock import FakeClock

Key = tuple[str, str]
A: Key = ("ns", "a")
B: Key = ("ns", "b")
C: Key = ("ns", "c")


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=5))


async def until(condition: Callable[[], bool]) -> None:
    """Lets the other tasks run until the condition holds (no wall-clock sleeping)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


# --- the de-duplicating queue ---------------------------------------------------------------


def test_collapse() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        queue.add(A)
        queue.add(A)
        assert len(queue) == 1
        assert await queue.get() == (A, None)
        assert len(queue) == 0

    run(scenario())


def test_collapse_keeps_the_freshest_payload() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        queue.add(A, "old")
        queue.add(A, "new")
        queue.add(A)  # no news: the waiting payload stays
        queue.add(B)
        queue.add(B, "body")
        assert [await queue.get(), await queue.get()] == [(A, "new"), (B, "body")]

    run(scenario())


def test_keys_come_out_in_the_order_they_were_added() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        for key in (B, A, C, A):
            queue.add(key)
        assert [(await queue.get())[0] for _ in range(3)] == [B, A, C]

    run(scenario())


def test_collapse_while_processing() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        queue.add(A, "first")
        assert await queue.get() == (A, "first")
        queue.add(A, "second")
        queue.add(A, "third")
        queue.add(A)
        assert len(queue) == 0, "not handed out while a worker holds it"
        assert queue.is_processing(A)
        queue.done(A)
        assert len(queue) == 1
        assert await queue.get() == (A, "third")
        queue.done(A)
        assert len(queue) == 0
        assert not queue.is_processing(A)

    run(scenario())


def test_get_waits_for_an_add() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        getter = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        assert not getter.done()
        queue.add(A, "body")
        assert await getter == (A, "body")

    run(scenario())


def test_a_getter_cancelled_after_its_wake_up_passes_it_on() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        first = asyncio.ensure_future(queue.get())
        second = asyncio.ensure_future(queue.get())
        await asyncio.sleep(0)
        queue.add(A)  # wakes the first getter...
        first.cancel()  # ...which is cancelled before it runs
        assert await second == (A, None)
        with pytest.raises(asyncio.CancelledError):
            await first

    run(scenario())


def test_add_while_processing_with_many_producers_and_consumers() -> None:
    """Producers add keys with increasing payloads while consumers handle them in threads: no
    key is ever handled by two consumers at once, and each key's last handling sees its last
    payload (no add is lost)."""
    keys = [("ns", f"run-{i}") for i in range(8)]
    handled: dict[Key, list[int]] = defaultdict(list)
    in_flight: set[Key] = set()
    overlaps: list[Key] = []

    async def scenario() -> None:
        queue: WorkQueue[Key, int] = WorkQueue()
        last: dict[Key, int] = {}
        added_while_processing = [0]
        counter = iter(range(1, 1_000_000))

        async def produce(seed: int) -> None:
            chance = random.Random(seed)
            for _ in range(100):
                key = chance.choice(keys)
                last[key] = payload = next(counter)
                added_while_processing[0] += queue.is_processing(key)
                queue.add(key, payload)
                await asyncio.sleep(0)

        async def consume() -> None:
            while True:
                try:
                    key, payload = await queue.get()
                except ShutDown:
                    return
                if key in in_flight:
                    overlaps.append(key)
                in_flight.add(key)
                try:
                    await asyncio.to_thread(lambda: None)  # the reconcile, in a thread
                    assert payload is not None
                    handled[key].append(payload)
                finally:
                    in_flight.discard(key)
                    queue.done(key)

        consumers = [asyncio.ensure_future(consume()) for _ in range(4)]
        await asyncio.gather(*(produce(seed) for seed in range(5)))
        await queue.drain()
        await asyncio.gather(*consumers)
        assert added_while_processing[0] > 0, "the case under test happened"
        assert not overlaps
        assert {key: payloads[-1] for key, payloads in handled.items()} == last
        for payloads in handled.values():
            assert payloads == sorted(payloads), "a key never goes back to an older payload"

    run(scenario())


# --- shutting down --------------------------------------------------------------------------


def test_drain_on_shutdown() -> None:
    """Keys waiting at shutdown are still handed out, adds after it are ignored, then get()
    says the queue is shut down."""

    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        queue.add(A)
        assert await queue.get() == (A, None)
        queue.add(A, "again")
        queue.add(B)
        queue.shut_down()
        queue.add(C)
        assert queue.shutting_down
        assert await queue.get() == (B, None)
        queue.done(A)  # added while processing: it still comes back
        assert await queue.get() == (A, "again")
        with pytest.raises(ShutDown):
            await queue.get()

    run(scenario())


def test_shut_down_wakes_every_waiting_getter() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        getters = [asyncio.ensure_future(queue.get()) for _ in range(3)]
        await asyncio.sleep(0)
        queue.shut_down()
        outcomes = await asyncio.gather(*getters, return_exceptions=True)
        assert all(isinstance(outcome, ShutDown) for outcome in outcomes)

    run(scenario())


def test_drain_waits_for_the_keys_being_processed() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        queue.add(A)
        await queue.get()
        drained = asyncio.ensure_future(queue.drain())
        await asyncio.sleep(0)
        assert not drained.done()
        queue.done(A)
        await drained

    run(scenario())


def test_drain_dropping_what_waits_only_finishes_what_is_processed() -> None:
    async def scenario() -> None:
        queue: WorkQueue[Key, str] = WorkQueue()
        queue.add(A)
        await queue.get()
        queue.add(A)
        queue.add(B)
        drained = asyncio.ensure_future(queue.drain(drop_waiting=True))
        await asyncio.sleep(0)
        assert not drained.done()
        queue.done(A)
        await drained
        assert len(queue) == 0
        with pytest.raises(ShutDown):
            await queue.get()

    run(scenario())


# --- timers ---------------------------------------------------------------------------------


def timers_on(clock: FakeClock) -> tuple[Timers[Key], list[Key]]:
    due: list[Key] = []
    return Timers(clock, due.append), due


def test_schedule_fires_on_the_clock() -> None:
    clock = FakeClock()
    timers, due = timers_on(clock)
    timers.schedule(A, seconds(5))
    assert timers.due_at(A) == clock.now() + seconds(5)
    clock.advance(4.9)
    assert due == []
    clock.advance(0.1)
    assert due == [A]
    assert timers.due_at(A) is None
    assert len(timers) == 0


def test_schedule_at_a_moment_and_in_the_past() -> None:
    clock = FakeClock()
    timers, due = timers_on(clock)
    timers.schedule(A, clock.now() + seconds(3))
    timers.schedule(B, clock.now() - seconds(3))
    clock.advance(0)
    assert due == [B]
    clock.advance(3)
    assert due == [B, A]


def test_schedule_replaces_the_previous_time_later_or_earlier() -> None:
    """Unlike client-go's AddAfter, the latest schedule wins, not the earliest."""
    clock = FakeClock()
    timers, due = timers_on(clock)
    timers.schedule(A, seconds(5))
    timers.schedule(A, seconds(10))
    timers.schedule(B, seconds(10))
    timers.schedule(B, seconds(2))
    clock.advance(5)
    assert due == [B]
    clock.advance(5)
    assert due == [B, A]
    clock.advance(60)
    assert due == [B, A], "each key fired once"
    assert clock.pending() == []


def test_schedule_none_cancels() -> None:
    clock = FakeClock()
    timers, due = timers_on(clock)
    timers.schedule(A, seconds(1))
    timers.schedule(A, None)
    timers.schedule(B, seconds(1))
    timers.cancel(B)
    clock.advance(60)
    assert due == []
    assert len(timers) == 0


def test_close_cancels_every_timer_and_sets_no_more() -> None:
    clock = FakeClock()
    timers, due = timers_on(clock)
    timers.schedule(A, seconds(1))
    timers.close()
    timers.schedule(B, seconds(1))
    clock.advance(60)
    assert due == []


def test_a_timer_that_fires_while_processing_brings_the_key_back_once() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        queue: WorkQueue[Key, str] = WorkQueue()
        timers = Timers(clock, queue.add)
        queue.add(A, "body")
        await queue.get()
        timers.schedule(A, seconds(1))
        queue.add(A, "newer")
        clock.advance(1)  # adds A without a payload: the newer body stays
        queue.done(A)
        assert len(queue) == 1
        assert await queue.get() == (A, "newer")

    run(scenario())


def test_loop_clock_fires_on_the_event_loop() -> None:
    async def scenario() -> None:
        fired = asyncio.Event()
        timers: Timers[Key] = Timers(LoopClock(late_by=timedelta(0)), lambda key: fired.set())
        timers.schedule(A, timedelta(milliseconds=1))
        await asyncio.wait_for(fired.wait(), timeout=1)

    run(scenario())


# --- backoff --------------------------------------------------------------------------------


def test_backoff_steps() -> None:
    backoff: Backoff[Key] = Backoff()
    retries = [backoff.when(A) for _ in range(8)]
    assert [retry.delay.total_seconds() for retry in retries] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [retry.failures for retry in retries] == list(range(1, 9))
    assert backoff.failures(A) == 8


def test_forget_resets_the_backoff() -> None:
    backoff: Backoff[Key] = Backoff()
    backoff.when(A)
    backoff.when(A)
    backoff.forget(A)
    assert backoff.failures(A) == 0
    assert backoff.when(A) == Retry(failures=1, delay=seconds(0.5))


def test_keys_back_off_separately() -> None:
    backoff: Backoff[Key] = Backoff()
    backoff.when(A)
    backoff.when(A)
    assert backoff.when(B) == Retry(failures=1, delay=seconds(0.5))
    assert backoff.failures(A) == 2


def test_backoff_stays_capped_however_long_it_fails() -> None:
    backoff: Backoff[Key] = Backoff(first=seconds(1), cap=seconds(7))
    retries = [backoff.when(A) for _ in range(5000)]
    assert [retry.delay.total_seconds() for retry in retries[:5]] == [1, 2, 4, 7, 7]
    assert retries[-1] == Retry(failures=5000, delay=seconds(7))


# --- workers --------------------------------------------------------------------------------


class Reconciles:
    """Stands in for a reconcile: returns (or raises) the outcomes given, one per call."""

    def __init__(self, *outcomes: Result | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[Key, str | None]] = []
        self.errors: list[tuple[Key, str, Retry]] = []

    async def __call__(self, key: Key, payload: str | None) -> Result:
        self.calls.append((key, payload))
        outcome = self.outcomes.pop(0) if self.outcomes else Result()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def on_error(self, key: Key, error: Exception, retry: Retry) -> None:
        self.errors.append((key, str(error), retry))


def test_a_success_forgets_the_backoff_and_schedules_what_the_result_asks() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        timers, _ = timers_on(clock)
        backoff: Backoff[Key] = Backoff()
        backoff.when(A)
        reconcile = Reconciles(Result(requeue_after=seconds(10)))
        await handle(A, None, timers, backoff, reconcile)
        assert backoff.failures(A) == 0
        assert timers.due_at(A) == clock.now() + seconds(10)
        await handle(A, None, timers, backoff, reconcile)  # Result(): no timer
        assert timers.due_at(A) is None

    run(scenario())


def test_an_error_requeues_after_the_backoff() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        timers, due = timers_on(clock)
        backoff: Backoff[Key] = Backoff()
        reconcile = Reconciles(RuntimeError("down"), RuntimeError("still down"))
        await handle(A, "body", timers, backoff, reconcile, reconcile.on_error)
        assert timers.due_at(A) == clock.now() + seconds(0.5)
        await handle(A, "body", timers, backoff, reconcile, reconcile.on_error)
        assert timers.due_at(A) == clock.now() + seconds(1)
        assert reconcile.errors == [
            (A, "down", Retry(1, seconds(0.5))),
            (A, "still down", Retry(2, seconds(1))),
        ]
        clock.advance(1)
        assert due == [A]

    run(scenario())


def test_what_on_error_decides_for_the_timer_comes_last() -> None:
    """Giving up on a key (no timer) is not undone by the retry its failure scheduled."""

    async def scenario() -> None:
        clock = FakeClock()
        timers, _ = timers_on(clock)

        async def give_up(key: Key, error: Exception, retry: Retry) -> None:
            timers.cancel(key)

        reconcile = Reconciles(RuntimeError("fault"))
        await handle(A, None, timers, Backoff(), reconcile, give_up)
        assert timers.due_at(A) is None

    run(scenario())


def test_a_failing_on_error_does_not_stop_the_worker() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        timers, _ = timers_on(clock)

        async def broken(key: Key, error: Exception, retry: Retry) -> None:
            raise RuntimeError("the error handler failed too")

        reconcile = Reconciles(RuntimeError("fault"))
        await handle(A, None, timers, Backoff(), reconcile, broken)
        assert timers.due_at(A) == clock.now() + seconds(0.5)

    run(scenario())


def test_workers_retry_then_follow_the_result_until_shut_down() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        queue: WorkQueue[Key, str] = WorkQueue()
        timers = Timers(clock, queue.add)
        backoff: Backoff[Key] = Backoff()
        reconcile = Reconciles(RuntimeError("outage"), Result(requeue_after=seconds(60)))
        workers = [
            asyncio.ensure_future(worker(queue, timers, backoff, reconcile, reconcile.on_error))
            for _ in range(2)
        ]
        queue.add(A, "body")
        await until(lambda: timers.due_at(A) is not None)
        assert reconcile.calls == [(A, "body")]
        clock.advance(0.5)  # the retry: the Run is read afresh
        await until(lambda: len(reconcile.calls) == 2 and not queue.is_processing(A))
        assert reconcile.calls[1] == (A, None)
        assert backoff.failures(A) == 0
        assert timers.due_at(A) == clock.now() + seconds(60)
        queue.shut_down()
        await asyncio.gather(*workers)

    run(scenario())


# --- the worker pool ------------------------------------------------------------------------


def test_a_worker_pool_reconciles_retries_forgets_and_stops() -> None:
    async def scenario() -> None:
        seen: list[Key] = []
        errors: list[Key] = []

        async def reconcile(key: Key, _: None) -> Result:
            seen.append(key)
            if key == B:
                raise RuntimeError("boom")
            return Result(requeue_after=seconds(60))

        async def failed(key: Key, error: Exception, retry: Retry) -> None:
            errors.append(key)

        pool: WorkerPool[Key, None] = WorkerPool(reconcile, failed)
        pool.start(2)
        pool.queue.add(A)
        pool.queue.add(B)
        await until(lambda: sorted(seen) == [A, B] and errors == [B])
        assert pool.timers.due_at(A) is not None, "the result's requeue_after set A's timer"
        assert pool.backoff.failures(B) == 1 and pool.timers.due_at(B) is not None
        pool.forget(B)
        assert pool.backoff.failures(B) == 0 and pool.timers.due_at(B) is None
        await pool.stop()
        with pytest.raises(ShutDown):
            await pool.queue.get()

    run(scenario())


def test_a_paused_pool_holds_keys_without_timers_and_reconciles_them_on_resuming() -> None:
    async def scenario() -> None:
        seen: list[Key] = []

        async def reconcile(key: Key, _: None) -> Result:
            seen.append(key)
            return Result()

        pool: WorkerPool[Key, None] = WorkerPool(reconcile)
        pool.set_paused(True)
        pool.start(1)
        pool.timers.schedule(A, seconds(60))
        pool.queue.add(A)
        pool.queue.add(B)
        pool.queue.add(C)
        await until(lambda: len(pool.queue) == 0 and not pool.queue.is_processing(C))
        pool.forget(C)  # gone while held: not reconciled on resuming
        assert seen == [] and pool.timers.due_at(A) is None, "a standby sets no timers"
        pool.set_paused(False)
        await until(lambda: sorted(seen) == [A, B])
        await pool.stop()
        assert C not in seen

    run(scenario())
