"""The step Job watch: what it holds per Run and per Agent, that it calls back only when a
finished Job shows something new or goes away, and that a fresh list forgets what is gone."""

from __future__ import annotations

from typing import Any

from nofx.builders.labels import AGENT_LABEL, RUN_LABEL
from nofx.builders.ownership import owner_reference
from nofx.reconcilers.step_jobs import StepJob, StepJobs


def job(name: str, run: str = "r1", namespace: str = "ns", *, done: str | None = None) -> Any:
    conditions = [{"type": done, "status": "True"}] if done else []
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {RUN_LABEL: run, AGENT_LABEL: "echo"},
            "ownerReferences": [owner_reference(run, f"uid-{run}")],
        },
        "status": {"conditions": conditions, "active": 0 if done else 1},
    }


def watched(*namespaces: str) -> tuple[StepJobs, list[StepJob]]:
    jobs, told = StepJobs(None, namespaces), []
    jobs.on_finished = told.append
    return jobs, told


def test_it_holds_each_runs_jobs_and_each_agents_unfinished_ones() -> None:
    jobs, told = watched()
    jobs.listed("", [job("a-1"), job("b-1", done="Complete"), job("x-1", run="r2")])
    assert sorted(jobs.of_run("ns", "r1")) == ["a-1", "b-1"]
    assert jobs.of_run("ns", "r1")["b-1"].state == "Succeeded"
    assert jobs.active_of_agent("ns", "echo") == {"a-1", "x-1"}
    assert jobs.run_of_job("ns", "x-1") == "r2" and jobs.run_of_job("ns", "nope") is None
    assert [t.observation.name for t in told] == ["b-1"], "only the finished Job is told"


def test_it_tells_when_a_job_finishes_or_goes_and_not_for_repeats() -> None:
    jobs, told = watched()
    jobs.listed("", [job("a-1")])
    jobs.changed("", "MODIFIED", job("a-1"))
    assert told == [], "an unfinished Job changes nothing the Run waits for"
    jobs.changed("", "MODIFIED", job("a-1", done="Failed"))
    jobs.changed("", "MODIFIED", job("a-1", done="Failed"))  # e.g. a finalizer removed
    assert [(t.observation.name, t.observation.state) for t in told] == [("a-1", "Failed")]
    assert jobs.active_of_agent("ns", "echo") == set()
    jobs.changed("", "DELETED", job("a-1", done="Failed"))
    assert len(told) == 2 and told[1].run == "r1"
    assert jobs.of_run("ns", "r1") == {}


def test_a_fresh_list_forgets_jobs_deleted_meanwhile_in_its_namespace_only() -> None:
    jobs, told = watched("ns", "other")
    jobs.listed("ns", [job("a-1"), job("b-1")])
    jobs.listed("other", [job("c-1", namespace="other")])
    jobs.listed("ns", [job("b-1")])  # after a gap: a-1 was deleted meanwhile
    assert sorted(jobs.of_run("ns", "r1")) == ["b-1"]
    assert [t.observation.name for t in told] == ["a-1"], "its Run hears that it went"
    assert jobs.run_of_job("other", "c-1") == "r1", "another namespace's list is its own"
