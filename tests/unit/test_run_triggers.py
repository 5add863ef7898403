"""When RunReconciler reconciles: triggers coalesce per Run, timers follow the latest decision,
waiters miss no wake-up, and a failed reconcile is retried after a backoff."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections import defaultdict
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError

from nofx.kube import Conflict
from nofx.reconcilers.errors import ErrorBudget, is_transient
from nofx.reconcilers.runs import RunKey, Waiters
from tests.unit.run_harness import KEY, NAMESPACE, RETRY, Harness, step

pytestmark = pytest.mark.usefixtures("events")
OTHER: RunKey = (NAMESPACE, "other")


class Reconciles:
    """Stands in for RunReconciler._reconcile: records each call, and holds it until the Run's
    gate opens (open by default)."""

    def __init__(self, *, hold: RunKey | None = None, barrier: threading.Barrier | None = None):
        self.calls: list[tuple[RunKey, Any]] = []
        self.started: dict[RunKey, threading.Event] = defaultdict(threading.Event)
        self.gate = threading.Event()
        self.hold, self.barrier = hold, barrier
        self.running: dict[RunKey, int] = defaultdict(int)
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, key: RunKey, body: Any, observed: Any) -> None:
        with self._lock:
            self.calls.append((key, body))
            self.running[key] += 1
            self.most = max(self.most, self.running[key])
        self.started[key].set()
        try:
            if self.barrier is not None:
                self.barrier.wait()
            if key == self.hold:
                self.gate.wait(timeout=2)
        finally:
            with self._lock:
                self.running[key] -= 1

    async def wait_started(self, key: RunKey) -> None:
        assert await asyncio.to_thread(self.started[key].wait, 2), f"{key} never reconciled"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=5))


def harness(reconciles: Reconciles) -> Harness:
    h = Harness(step("code"))
    h.reconciler._reconcile = reconciles  # type: ignore[method-assign]
    return h


# --- triggers -------------------------------------------------------------------------------


def test_triggers_during_a_reconcile_collapse_into_one_more_with_the_freshest_body() -> None:
    reconciles = Reconciles(hold=KEY)
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        first = asyncio.create_task(r.trigger(KEY, {"v": 1}))
        await reconciles.wait_started(KEY)
        await r.trigger(KEY, {"v": 2})  # returns at once: the Run is busy
        await r.trigger(KEY, {"v": 3})
        await r.trigger(KEY)  # no body: keeps the freshest one known
        reconciles.gate.set()
        await first

    run(scenario())
    assert reconciles.calls == [(KEY, {"v": 1}), (KEY, {"v": 3})]


def test_a_trigger_without_a_body_during_a_reconcile_reads_the_run_again() -> None:
    reconciles = Reconciles(hold=KEY)
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        first = asyncio.create_task(r.trigger(KEY, {"v": 1}))
        await reconciles.wait_started(KEY)
        await r.trigger(KEY)
        reconciles.gate.set()
        await first

    run(scenario())
    assert reconciles.calls == [(KEY, {"v": 1}), (KEY, None)]


def test_different_runs_reconcile_at_the_same_time() -> None:
    reconciles = Reconciles(barrier=threading.Barrier(2, timeout=2))  # both inside, or it breaks
    r = harness(reconciles).reconciler
    failures: list[Exception] = []
    r._failed = lambda key, error: failures.append(error)  # type: ignore[method-assign]

    async def scenario() -> None:
        await asyncio.gather(r.trigger(KEY), r.trigger(OTHER))

    run(scenario())
    assert failures == []
    assert sorted(key for key, _ in reconciles.calls) == sorted([KEY, OTHER])


def test_a_run_is_never_reconciled_twice_at_once() -> None:
    reconciles = Reconciles(hold=KEY)
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        first = asyncio.create_task(r.trigger(KEY, {"v": 1}))
        await reconciles.wait_started(KEY)
        r.trigger_soon([KEY] * 5)  # a freed slot, timers, Job events...
        await asyncio.gather(*r._tasks, r.trigger(KEY))
        reconciles.gate.set()
        await first

    run(scenario())
    assert reconciles.most == 1
    assert reconciles.calls == [(KEY, {"v": 1}), (KEY, None)]


def test_a_failed_reconcile_is_retried_after_its_backoff_and_a_success_forgets_it() -> None:
    h = Harness(step("code"))
    r = h.reconciler
    h.kube.fail_next("get", 1, RuntimeError("boom"))

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        await r.trigger(KEY)
        await asyncio.sleep(0.01)
        assert 0.5 < r._timers[KEY].when() - loop.time() <= 0.55
        assert r.errors.failed(OTHER) == (1, 0.5)  # counted per Run
        await r.trigger(KEY)
        assert r.errors.failed(KEY) == (1, 0.5)

    run(scenario())
    assert h.status.phase == "Running"


# --- timers ---------------------------------------------------------------------------------


def test_the_latest_wake_replaces_the_timer_and_none_cancels_it() -> None:
    r = Harness(step("code")).reconciler

    async def scenario() -> None:
        loop = r._loop = asyncio.get_running_loop()
        now = datetime.now(UTC)
        r._wake_at(KEY, now + timedelta(seconds=60))
        await asyncio.sleep(0.01)
        later = r._timers[KEY]
        r._wake_at(KEY, now + timedelta(seconds=30))  # even an earlier wake replaces it
        await asyncio.sleep(0.01)
        sooner = r._timers[KEY]
        assert later.cancelled() and not sooner.cancelled()
        assert 29 < sooner.when() - loop.time() < 30.1
        r._wake_at(KEY, None)
        await asyncio.sleep(0.01)
        assert KEY not in r._timers and sooner.cancelled()

    run(scenario())


def test_a_retry_arms_a_timer_and_a_decision_without_a_wake_disarms_it() -> None:
    h = Harness(step("code", retries=RETRY))
    r = h.reconciler

    async def scenario() -> None:
        loop = r._loop = asyncio.get_running_loop()
        h.reconcile()
        h.finish_job(h.job_name("code", 1), exit_code=1)
        h.reconcile()
        await asyncio.sleep(0.01)
        assert h.step("code").phase == "Waiting"
        assert 0.5 < r._timers[KEY].when() - loop.time() <= 1.05  # retry after 1s
        h.kube.patch_spec("runs", NAMESPACE, "demo", {"cancel": True})
        h.reconcile()
        await asyncio.sleep(0.01)
        assert h.status.phase == "Cancelled"
        assert KEY not in r._timers

    run(scenario())


def test_a_timer_fires_a_reconcile_of_its_run() -> None:
    reconciles = Reconciles()
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        r._loop = asyncio.get_running_loop()
        r._wake_at(KEY, datetime.now(UTC))
        await reconciles.wait_started(KEY)
        await asyncio.gather(*r._tasks)

    run(scenario())
    assert reconciles.calls == [(KEY, None)]
    assert KEY not in r._timers


def test_forget_drops_the_timer_the_waits_and_the_failures_of_a_deleted_run() -> None:
    r = Harness(step("code")).reconciler

    async def scenario() -> None:
        r._loop = asyncio.get_running_loop()
        r._wake_at(KEY, datetime.now(UTC) + timedelta(seconds=60))
        await asyncio.sleep(0.01)
        timer = r._timers[KEY]
        r.waiters.add(NAMESPACE, "Agent", "coder", KEY, r.waiters.version)
        r.errors.failed(KEY)
        r.forget(KEY)
        assert timer.cancelled() and KEY not in r._timers
        assert r.waiters.pop(NAMESPACE, "Agent", "coder") == set()
        assert r.errors.failed(KEY) == (1, 0.5)

    run(scenario())


def test_backoff_doubles_from_half_a_second_up_to_thirty() -> None:
    budget = ErrorBudget()
    steps = [budget.failed(KEY) for _ in range(9)]
    assert steps == list(enumerate([0.5, 1, 2, 4, 8, 16, 30, 30, 30], start=1))
    budget.forget(KEY)
    assert budget.failed(KEY) == (1, 0.5)
    assert (budget.show_after(transient=False), budget.show_after(transient=True)) == (3, 6)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ApiException(status=503), True),
        (ApiException(status=429), True),
        (ApiException(status=0), True),  # no response at all
        (ProtocolError("Connection aborted."), True),
        (MaxRetryError(None, "/apis", reason=None), True),  # type: ignore[arg-type]
        (http.client.RemoteDisconnected("closed"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (Conflict("runs/demo changed"), True),
        (ApiException(status=403), False),
        (ApiException(status=404), False),
        (ApiException(status=422), False),
        (RuntimeError("boom"), False),
        (RecursionError(), False),
        (KeyError("metadata"), False),
    ],
)
def test_outages_are_told_from_faults(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


# --- waiters --------------------------------------------------------------------------------


def test_add_tells_whether_a_release_came_since_the_snapshot() -> None:
    waiters = Waiters()
    seen = waiters.version
    assert not waiters.add(NAMESPACE, "Agent", "coder", KEY, seen)
    waiters.pop(NAMESPACE, "Template", "tpl")  # any release, even of something else
    assert waiters.add(NAMESPACE, "Agent", "coder", OTHER, seen)
    assert not waiters.add(NAMESPACE, "Agent", "coder", OTHER, waiters.version)


def test_pop_wakes_the_runs_waiting_for_that_thing_once() -> None:
    waiters = Waiters()
    for key in (KEY, OTHER):
        waiters.add(NAMESPACE, "AgentSlot", "coder", key, 0)
    waiters.add(NAMESPACE, "AgentSlot", "reviewer", KEY, 0)
    assert waiters.pop(NAMESPACE, "AgentSlot", "coder") == {KEY, OTHER}
    assert waiters.pop(NAMESPACE, "AgentSlot", "coder") == set()
    assert waiters.pop("elsewhere", "AgentSlot", "reviewer") == set()
    assert waiters.pop(NAMESPACE, "AgentSlot", "reviewer") == {KEY}


def test_pop_kind_wakes_every_run_waiting_for_that_kind_in_the_namespace() -> None:
    waiters = Waiters()
    waiters.add(NAMESPACE, "Agent", "coder", KEY, 0)
    waiters.add(NAMESPACE, "Agent", "reviewer", OTHER, 0)
    waiters.add(NAMESPACE, "Template", "tpl", (NAMESPACE, "third"), 0)
    waiters.add("elsewhere", "Agent", "coder", ("elsewhere", "fourth"), 0)
    assert waiters.pop_kind(NAMESPACE, "Agent") == {KEY, OTHER}
    assert waiters.pop_kind(NAMESPACE, "Agent") == set()
    assert waiters.pop(NAMESPACE, "Template", "tpl") == {(NAMESPACE, "third")}


def test_forget_drops_a_run_from_every_wait() -> None:
    waiters = Waiters()
    waiters.add(NAMESPACE, "Agent", "coder", KEY, 0)
    waiters.add(NAMESPACE, "Template", "tpl", KEY, 0)
    waiters.add(NAMESPACE, "Template", "tpl", OTHER, 0)
    waiters.forget(KEY)
    assert waiters.pop_kind(NAMESPACE, "Agent") == set()
    assert waiters.pop(NAMESPACE, "Template", "tpl") == {OTHER}


@pytest.mark.parametrize("released_meanwhile", [True, False])
def test_a_run_that_missed_its_wake_up_looks_again(released_meanwhile: bool) -> None:
    h = Harness(step("code"), agents={})  # Agent coder does not exist yet
    r = h.reconciler
    spawned: list[RunKey] = []
    r._spawn = spawned.append  # type: ignore[method-assign]

    async def scenario() -> None:
        r._loop = asyncio.get_running_loop()
        h.sync()
        observed = r._observe(KEY)
        if released_meanwhile:  # the Agent appeared after the snapshot, before the wait
            assert r.waiters.pop_kind(NAMESPACE, "Agent") == set()
        r._reconcile(KEY, None, observed)
        await asyncio.sleep(0.01)

    run(scenario())
    assert h.status.phase == "Pending"
    assert spawned == ([KEY] if released_meanwhile else [])
    assert r.waiters.pop(NAMESPACE, "Agent", "coder") == {KEY}
