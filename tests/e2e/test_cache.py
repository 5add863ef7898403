"""Cached steps with the real operator, control plane and Postgres: a second Run reuses the
outputs the first stored (no Job, no cost, an audited StepCached transition), a Run in another
namespace never does, and an entry older than the step's ttl is a miss that runs the Job;
without the mirror, a Run with a cached step fails at once with CacheUnavailable."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step, steps_by_name
from .test_mirror import Mirrored, fresh_namespace, mirrored, wait_mirrored

__all__ = ["mirrored"]  # the fixture, imported so that this module gets a plane of its own


@pytest.fixture(scope="module")
def cached(mirrored: Mirrored) -> Mirrored:
    return mirrored


def plan(name: str, ttl: str = "1h") -> dict:
    return run(
        name,
        steps=[
            step("fetch", "fetcher", inputs={"repo": "nofx"}, cache={"ttl": ttl, "key": "v1"}),
            step("use", "fetcher", dependsOn=["fetch"],
                 inputs={"from": "{{ steps.fetch.outputs.repo }}"}),
        ],
    )  # fmt: skip


def jobs_of(cached: Mirrored, namespace: str, run_name: str) -> list[str]:
    jobs = cached.kubectl.json("get", "jobs", "-n", namespace, "-l", f"nofx.dev/run={run_name}")
    return sorted(job["metadata"]["labels"]["nofx.dev/step"] for job in jobs["items"])


def finished(cached: Mirrored, namespace: str, name: str) -> dict:
    body = wait_for_phase(cached.kubectl, namespace, name, {"Succeeded", "Failed"}, timeout=60)
    assert body["status"]["phase"] == "Succeeded", body["status"].get("message")
    return body


def test_a_second_run_reuses_the_cached_outputs_and_a_miss_after_the_ttl_runs_the_job(
    cached: Mirrored,
) -> None:
    namespace = fresh_namespace(cached.kubectl, "cache", account="acme")
    apply(cached.kubectl, namespace, agent("fetcher"), plan("first"))
    first = finished(cached, namespace, "first")
    assert steps_by_name(first)["fetch"].get("reason") is None  # a miss: it ran its Job
    assert jobs_of(cached, namespace, "first") == ["fetch", "use"]
    wait_mirrored(cached, namespace, ["first"])
    [(run_name, step_name, account, created_at)] = cached.sql(
        "SELECT run_name, step, account, created_at FROM step_cache WHERE namespace = 'cache'"
    )
    assert (run_name, step_name, account) == ("first", "fetch", "acme")

    apply(cached.kubectl, namespace, plan("second"))
    second = finished(cached, namespace, "second")
    fetch = steps_by_name(second)["fetch"]
    assert (fetch["phase"], fetch["reason"]) == ("Succeeded", "Cached")
    assert "reused the outputs of Run cache/first step fetch" in fetch["message"]
    assert fetch["outputs"] == steps_by_name(first)["fetch"]["outputs"]
    assert "jobName" not in fetch and "attempts" not in fetch
    assert jobs_of(cached, namespace, "second") == ["use"]  # no Job for the cached step
    assert steps_by_name(second)["use"]["outputs"]["from"] == "nofx"
    wait_mirrored(cached, namespace, ["second"])
    uid = second["metadata"]["uid"]
    assert cached.sql("SELECT step FROM usage_records WHERE run_uid = %s ORDER BY step", uid) == [
        ("use",)
    ]  # the hit cost nothing
    [(message,)] = cached.sql(
        "SELECT message FROM audit_events WHERE uid = %s AND reason = 'StepCached'", uid
    )
    assert "step fetch: cached: reused the outputs of Run cache/first" in message

    # Another namespace of the same account never sees this namespace's entries.
    other = fresh_namespace(cached.kubectl, "cache-other", account="acme")
    apply(cached.kubectl, other, agent("fetcher"), plan("first"))
    finished(cached, other, "first")
    assert jobs_of(cached, other, "first") == ["fetch", "use"]

    # Past the ttl (2 s after the entry was made), the same key is a miss: the Job runs.
    time.sleep(max(0.0, 2.5 - (datetime.now(UTC) - created_at).total_seconds()))
    apply(cached.kubectl, namespace, plan("third", ttl="2s"))
    third = finished(cached, namespace, "third")
    assert steps_by_name(third)["fetch"].get("reason") is None
    assert steps_by_name(third)["fetch"]["attempts"] == 1
    assert jobs_of(cached, namespace, "third") == ["fetch", "use"]


def test_without_a_mirror_a_run_with_a_cached_step_fails_with_cache_unavailable(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, agent("fetcher"), plan("uncacheable"))
    body = wait_for_phase(kubectl, namespace, "uncacheable", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Failed"
    [succeeded] = [c for c in body["status"]["conditions"] if c["type"] == "Succeeded"]
    assert succeeded["reason"] == "CacheUnavailable"
    assert "step fetch sets cache" in succeeded["message"]
    assert "Postgres mirror" in succeeded["message"]
    assert kubectl.json("get", "jobs", "-n", namespace)["items"] == []
