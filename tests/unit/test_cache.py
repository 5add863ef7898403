"""Cached steps: the cache key, and what the planner does with a lookup's answer (wait, reuse
the outputs without a Job or a cost, or run the Job and hand its outputs to the mirror)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from nofx.api.reasons import Reason
from nofx.api.template import Step
from nofx.changes import transitions
from nofx.mirror import outbox
from nofx.planner.caching import cache_key
from nofx.planner.facts import CacheHit

from .builders import T0, Sim, condition, entry, inline, phases, step

KEY_PARTS: dict[str, Any] = {
    "namespace": "team-a",
    "account": "acme",
    "agent_spec_hash": "a" * 64,
    "image": "ghcr.io/nofx/coder:1",
    "inputs": {"repo": "x", "n": "1"},
    "key": None,
}


def cached_plan(**cache: Any) -> Any:
    return inline(
        step("fetch", inputs={"repo": "{{ params.repo }}"}, cache={"ttl": "1h", **cache}),
        step("use", "fetch", inputs={"sha": "{{ steps.fetch.outputs.sha }}"}),
        parameters={"repo": "nofx"},
    )


def cached_sim(**cache: Any) -> Sim:
    sim = Sim(cached_plan(**cache))
    sim.set_world(cache_enabled=True)
    return sim


def hit(created_at: Any = T0, outputs: dict[str, Any] | None = None) -> CacheHit:
    return CacheHit("team-a", "first", "uid-1", "fetch", outputs or {"sha": "abc"}, created_at)


# --- the key ---


def test_the_key_is_stable_and_every_part_changes_it() -> None:
    base = cache_key(**KEY_PARTS)
    assert base == cache_key(**{**KEY_PARTS, "inputs": {"n": "1", "repo": "x"}})  # key order
    assert len(base) == 64
    changed = {
        "namespace": "team-b",
        "account": "other",
        "agent_spec_hash": "b" * 64,
        "image": "ghcr.io/nofx/coder:2",
        "inputs": {"repo": "y", "n": "1"},
        "key": "v2",
    }
    keys = {cache_key(**{**KEY_PARTS, part: value}) for part, value in changed.items()}
    assert base not in keys and len(keys) == len(changed)


def test_the_key_differs_when_the_pinned_agent_or_inputs_differ_in_a_run() -> None:
    first, other = cached_sim(), Sim(cached_plan(key="v2"))
    other.set_world(cache_enabled=True)
    first.decide()
    other.decide()
    assert first.last.cache_queries[0].key != other.last.cache_queries[0].key


# --- the API ---


@pytest.mark.parametrize(
    ("cache", "problem"),
    [({"ttl": "soon"}, "ttl"), ({"ttl": "721h"}, "at most 720h"), ({}, "ttl"),
     ({"ttl": "1h", "extra": 1}, "extra")],
)  # fmt: skip
def test_a_bad_cache_field_is_refused(cache: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Step.model_validate({"name": "a", "agentRef": {"name": "coder"}, "cache": cache})


# --- the planner ---


def test_a_cached_step_waits_for_the_lookup_and_creates_no_job() -> None:
    sim = cached_sim()
    decision = sim.decide()
    assert decision.create_jobs == []
    fetch = entry(sim.status, "fetch")
    assert (fetch.phase, fetch.reason) == ("Waiting", Reason.CACHE_LOOKUP)
    [query] = decision.cache_queries
    assert (query.namespace, query.account, query.since) == (
        "team-a",
        "team-a",
        T0 - timedelta(hours=1),
    )
    assert decision.wake_at is not None  # asks again if the answer is lost
    again = sim.decide()  # no answer yet: still waiting, still asking
    assert again.cache_queries == [query] and again.create_jobs == []


def test_a_hit_reuses_the_outputs_without_a_job_or_cost_and_is_audited() -> None:
    sim = cached_sim()
    query = sim.decide().cache_queries[0]
    before = sim.status
    sim.set_world(cache_answers={query.key: hit()})
    decision = sim.decide()
    fetch = entry(sim.status, "fetch")
    assert (fetch.phase, fetch.reason, fetch.outputs) == (
        "Succeeded",
        Reason.CACHED,
        {"sha": "abc"},
    )
    assert "Run team-a/first step fetch" in (fetch.message or "")
    assert fetch.attempts is None and fetch.job_name is None
    assert decision.cache_queries == []
    assert [job.step for job in decision.create_jobs] == ["use"]  # downstream reads the outputs
    assert decision.create_jobs[0].inputs == {"sha": "abc"}
    assert decision.finished_attempts == []  # no usage record: it costs nothing
    assert sim.status.usage is not None and sim.status.usage.cost == "0"
    [change] = [c for c in transitions(before, sim.status) if c.step == "fetch"]
    assert (change.reason, change.to_phase) == ("StepCached", "Succeeded")


def test_a_miss_runs_the_job_and_its_success_carries_key_and_outputs_to_the_mirror() -> None:
    sim = cached_sim()
    query = sim.decide().cache_queries[0]
    sim.set_world(cache_answers={query.key: None})
    decision = sim.decide()
    assert [job.step for job in decision.create_jobs] == ["fetch"]
    sim.succeed("fetch", outputs={"sha": "abc"})
    decision = sim.decide()
    [attempt] = decision.finished_attempts
    assert (attempt.cache_key, attempt.outputs) == (query.key, {"sha": "abc"})
    status = sim.status.model_copy(deep=True)
    outbox.record(status, [], [attempt], T0, {"uid": "u", "namespace": "team-a", "name": "r"})
    body = {
        "metadata": {"uid": "u", "namespace": "team-a", "name": "r"},
        "status": status.to_dict(),
    }
    _, [usage] = outbox.to_records(body, status.audit.pending or [])  # type: ignore[union-attr]
    assert (usage.cache_key, usage.outputs, usage.outcome) == (
        query.key,
        {"sha": "abc"},
        "Succeeded",
    )


def test_a_failed_attempt_of_a_cached_step_stores_nothing_and_retries_run_jobs() -> None:
    plan = inline(
        step("fetch", cache={"ttl": "1h"}, retries={"limit": 1, "backoff": {"duration": "1s"}})
    )
    sim = Sim(plan)
    sim.set_world(cache_enabled=True)
    key = sim.decide().cache_queries[0].key
    sim.set_world(cache_answers={key: None})
    sim.decide()
    sim.finish("fetch", state="Failed")
    decision = sim.decide()
    assert decision.finished_attempts[0].cache_key is None
    sim.tick(2)
    decision = sim.decide()
    assert decision.cache_queries == [] and len(decision.create_jobs) == 1  # no second lookup


def test_an_entry_older_than_the_ttl_is_a_miss() -> None:
    sim = cached_sim()
    key = sim.decide().cache_queries[0].key
    sim.set_world(cache_answers={key: hit(created_at=T0 - timedelta(hours=2))})
    decision = sim.decide()
    assert [job.step for job in decision.create_jobs] == ["fetch"]


def test_without_a_mirror_a_run_with_a_cached_step_fails_at_start() -> None:
    sim = Sim(cached_plan())  # cache_enabled is False: no mirror
    decision = sim.decide()
    assert decision.create_jobs == [] and sim.status.phase == "Failed"
    status, reason, message = condition(sim.status, "Succeeded")
    assert (status, reason) == ("False", Reason.CACHE_UNAVAILABLE)
    assert "step fetch sets cache" in message and "Postgres mirror" in message


def test_steps_without_cache_never_look_up() -> None:
    sim = Sim(inline(step("a")))
    decision = sim.decide()
    assert decision.cache_queries == [] and phases(sim.status) == {"a": "Running"}


# --- the lookup thread (reconcilers/step_cache.py) ---


class FakeStore:
    """Answers lookups from a dict; a key mapped to an exception raises it."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries, self.asked = entries, []

    def cache_lookup(self, key: str, namespace: str, account: str, since: Any) -> Any:
        self.asked.append(key)
        found = self.entries.get(key)
        if isinstance(found, Exception):
            raise found
        return found


def test_the_lookup_thread_answers_triggers_the_run_and_forgets_answers_no_longer_asked() -> None:
    import threading

    from nofx.mirror.queries import CacheEntry
    from nofx.planner.facts import CacheQuery
    from nofx.reconcilers.step_cache import StepCache

    stored = CacheEntry("team-a", "first", "uid-1", "fetch", {"sha": "abc"}, T0)
    store = FakeStore({"hit": stored, "broken": RuntimeError("Postgres away")})
    cache = StepCache(store)  # type: ignore[arg-type]
    answered = threading.Semaphore(0)
    cache.on_answer = lambda run: answered.release()
    cache.start()
    try:
        run = ("team-a", "second")
        queries = [CacheQuery(key, "team-a", "acme", T0) for key in ("hit", "miss", "broken")]
        cache.ask(run, queries)
        cache.ask(run, queries)  # asked already: not looked up twice
        for _ in queries:
            assert answered.acquire(timeout=5)
        assert sorted(store.asked) == ["broken", "hit", "miss"]
        answers = cache.answers(run)
        assert answers["hit"] == CacheHit(*stored)
        assert answers["miss"] is None and answers["broken"] is None  # a failure runs the Job
        cache.ask(run, queries[:1])  # the other steps moved on
        assert list(cache.answers(run)) == ["hit"]
        cache.ask(run, [])
        assert cache.answers(run) == {}
    finally:
        cache.stop()
