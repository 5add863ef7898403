"""When RunReconciler reconciles: triggers coalesce per Run through its work queue, the timer
follows the latest decision, waiters miss no wake-up, and a failed pass is retried after a
backoff. (The queue's own rules are tested in test_workqueue.py.)"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections import defaultdict
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, ProtocolError

from nofx.api_errors import Conflict
from nofx.reconcilers.errors import failures_before_showing, is_transient
from nofx.reconcilers.run_reconciler import RunKey, RunReconciler
from nofx.reconcilers.waiters import Waiters
from nofx.workqueue import Result
from tests.unit.run_harness import KEY, NAMESPACE, RETRY, Harness, step

pytestmark = pytest.mark.usefixtures("events")
OTHER: RunKey = (NAMESPACE, "other")


class Reconciles:
    """Stands in for RunReconciler._reconcile: records each call with the version of the body
    it starts from (the newest known, as _reconcile takes it), and holds it until the Run's gate
    opens (open by default)."""

    def __init__(self, *, hold: RunKey | None = None, barrier: threading.Barrier | None = None):
        self.calls: list[tuple[RunKey, Any]] = []
        self.latest: Callable[[RunKey], Any] = lambda key: None
        self.started: dict[RunKey, threading.Event] = defaultdict(threading.Event)
        self.gate = threading.Event()
        self.hold, self.barrier = hold, barrier
        self.running: dict[RunKey, int] = defaultdict(int)
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, key: RunKey, body: Any, observed: Any) -> Result:
        body = body if body is not None else self.latest(key)
        with self._lock:
            self.calls.append((key, body and body["metadata"]["resourceVersion"]))
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
        return Result()

    async def wait_started(self, key: RunKey) -> None:
        assert await asyncio.to_thread(self.started[key].wait, 2), f"{key} never reconciled"


def run(r: RunReconciler, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """The scenario with the reconciler's workers running, until its queue is idle."""

    async def main() -> None:
        r.start(workers=4)
        await scenario()
        while len(r.queue) or any(r.queue.is_processing(k) for k in (KEY, OTHER)):
            await asyncio.sleep(0.005)
        await r.stop()

    asyncio.run(asyncio.wait_for(main(), timeout=5))


def harness(reconciles: Reconciles) -> Harness:
    h = Harness(step("code"))
    h.reconciler._reconcile = reconciles  # type: ignore[method-assign]
    h.kube.own_writes.forget("runs", *KEY)
    reconciles.latest = lambda key: h.kube.own_writes.latest("runs", *key)
    return h


def event(version: int) -> dict[str, Any]:
    """A watch event's body of the Run, written by someone else."""
    return {"metadata": {"namespace": KEY[0], "name": KEY[1], "resourceVersion": str(version)}}


# --- triggers -------------------------------------------------------------------------------


def test_triggers_during_a_reconcile_collapse_into_one_more_with_the_freshest_body() -> None:
    reconciles = Reconciles(hold=KEY)
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        r.run_changed("MODIFIED", event(1))
        await reconciles.wait_started(KEY)
        r.run_changed("MODIFIED", event(2))  # the Run is busy: it waits, once
        r.run_changed("MODIFIED", event(3))
        r.trigger(KEY)  # a Job event: the freshest body known stays
        reconciles.gate.set()

    run(r, scenario)
    assert reconciles.calls == [(KEY, "1"), (KEY, "3")]


def test_a_run_without_a_known_body_is_read_afresh() -> None:
    reconciles = Reconciles()
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        r.trigger(KEY)

    run(r, scenario)
    assert reconciles.calls == [(KEY, None)]


def test_different_runs_reconcile_at_the_same_time() -> None:
    reconciles = Reconciles(barrier=threading.Barrier(2, timeout=2))  # both inside, or it breaks
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        r.trigger(KEY)
        r.trigger(OTHER)

    run(r, scenario)
    assert not reconciles.barrier or not reconciles.barrier.broken
    assert sorted(key for key, _ in reconciles.calls) == sorted([KEY, OTHER])


def test_a_run_is_never_reconciled_twice_at_once() -> None:
    reconciles = Reconciles(hold=KEY)
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        r.run_changed("MODIFIED", event(1))
        await reconciles.wait_started(KEY)
        r.trigger_soon([KEY] * 5)  # a freed slot, timers, Job events...
        r.trigger(KEY)
        await asyncio.sleep(0.02)
        reconciles.gate.set()

    run(r, scenario)
    assert reconciles.most == 1
    assert reconciles.calls == [(KEY, "1"), (KEY, "1")]


def test_a_failed_pass_is_retried_after_its_backoff_and_a_success_forgets_it() -> None:
    h = Harness(step("code"))
    r = h.reconciler
    h.kube.fail_next("create_job", 1, RuntimeError("boom"))

    async def scenario() -> None:
        r.trigger(KEY)
        while r.timers.due_at(KEY) is None:
            await asyncio.sleep(0.005)
        due = r.timers.due_at(KEY)
        assert due is not None and r.backoff.failures(KEY) == 1
        assert r.backoff.failures(OTHER) == 0  # counted per Run
        r.trigger(KEY)  # before the timer: it works now, and forgets the failure
        while r.backoff.failures(KEY):
            await asyncio.sleep(0.005)

    run(r, scenario)
    assert h.status.phase == "Running"


# --- timers ---------------------------------------------------------------------------------


def test_the_decision_sets_the_timer_and_one_without_a_wake_cancels_it() -> None:
    h = Harness(step("code", retries=RETRY))
    r = h.reconciler

    async def scenario() -> None:
        h.reconcile()
        h.finish_job(h.job_name("code", 1), exit_code=1)
        result = h.reconcile()
        assert h.step("code").phase == "Waiting"
        assert result.requeue_after == h.step("code").next_attempt_at  # the retry, in 1 s
        h.kube.patch_spec("runs", NAMESPACE, "demo", {"cancel": True})
        assert h.reconcile().requeue_after is None
        assert h.status.phase == "Cancelled"

    run(r, scenario)


def test_a_timer_fires_a_reconcile_of_its_run() -> None:
    reconciles = Reconciles()
    r = harness(reconciles).reconciler

    async def scenario() -> None:
        r.timers.schedule(KEY, timedelta(0))
        await reconciles.wait_started(KEY)

    run(r, scenario)
    assert reconciles.calls == [(KEY, None)]
    assert r.timers.due_at(KEY) is None


def test_forget_drops_the_timer_the_waits_and_the_failures_of_a_deleted_run() -> None:
    r = Harness(step("code")).reconciler

    async def scenario() -> None:
        r.timers.schedule(KEY, timedelta(seconds=60))
        r.waiters.add(NAMESPACE, "Agent", "coder", KEY, r.waiters.version)
        r.backoff.when(KEY)
        r.forget(KEY)
        assert r.timers.due_at(KEY) is None
        assert r.waiters.pop(NAMESPACE, "Agent", "coder") == set()
        assert r.backoff.failures(KEY) == 0

    run(r, scenario)


def test_faults_show_after_three_failures_outages_after_six() -> None:
    assert (failures_before_showing(False), failures_before_showing(True)) == (3, 6)


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
    added: list[RunKey] = []

    async def scenario() -> None:
        r._loop = asyncio.get_running_loop()
        r.queue.add = lambda key, payload=None: added.append(key)  # type: ignore[method-assign]
        h.sync()
        observed = h._observed()
        if released_meanwhile:  # the Agent appeared after the snapshot, before the wait
            assert r.waiters.pop_kind(NAMESPACE, "Agent") == set()
        r._reconcile(KEY, None, observed)
        await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert h.status.phase == "Pending"
    assert added == ([KEY] if released_meanwhile else [])
    assert r.waiters.pop(NAMESPACE, "Agent", "coder") == {KEY}
