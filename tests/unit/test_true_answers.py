"""decide() when things go wrong: a crash between creating a Job and recording it, a Job or child
Run the API server refused, a Pod that cannot be created, a status someone else rewrote, plans
too large for a status or that start themselves without end. Each ends in a phase and a reason."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nofx.api import RunStatus
from nofx.api.reasons import Reason
from nofx.planner.attempts import POD_START_CHECK
from nofx.planner.conditions import reconcile_error
from nofx.planner.decide import decide
from nofx.planner.facts import ChildRunObservation, JobObservation, Limits
from nofx.planner.naming import job_name
from nofx.planner.outputs import MAX_OUTPUT_NESTING, parse_outputs
from nofx.planner.pinning import status_bound_problems, template_cycle
from nofx.planner.stopping import abort_run
from tests.unit.builders import (
    RUN_NAME,
    RUN_UID,
    Sim,
    by_ref,
    condition,
    entry,
    inline,
    phases,
    step,
    template,
    view,
)

RETRY = {"limit": 2, "backoff": {"duration": "1s", "factor": 1}}


def finished_job(sim: Sim, step_name: str, attempt: int, *, pod_read: bool) -> JobObservation:
    """A Job of the step that exists and finished, whatever the Run's status says."""
    name = job_name(RUN_NAME, RUN_UID, step_name, None, attempt)
    return JobObservation(
        name=name,
        step=step_name,
        index=None,
        attempt=attempt,
        state="Succeeded",
        started_at=sim.now,
        finished_at=sim.now,
        pods_started=True,
        pod_read=pod_read,
        termination_message=json.dumps({"result": "ok"}) if pod_read else None,
        exit_code=0 if pod_read else None,
    )


# --- a crash between creating a Job and recording it ------------------------------------------


def test_a_job_created_before_a_crash_is_read_with_its_outputs_not_created_again() -> None:
    sim = Sim(
        inline(
            step("code", retries=RETRY),
            step("test", "code", inputs={"r": "{{ steps.code.outputs.result }}"}),
        )
    )
    sim.decide()
    sim.fail("code")
    sim.decide()
    assert entry(sim.status, "code").phase == "Waiting"
    sim.tick(2)
    # The operator created attempt 2 and died before writing status; the Job finished meanwhile.
    job = finished_job(sim, "code", 2, pod_read=True)
    sim.set_world(jobs={**sim.world.jobs, job.name: job})
    decision = sim.decide()
    assert [r.job_name for r in decision.create_jobs if r.step == "code"] == []
    assert entry(sim.status, "code").phase == "Succeeded"
    assert entry(sim.status, "code").outputs == {"result": "ok"}
    [test_job] = decision.create_jobs
    assert test_job.inputs == {"r": "ok"}


def test_a_finished_job_whose_pod_is_gone_is_a_failed_attempt_not_empty_outputs() -> None:
    sim = Sim(inline(step("code", retries=RETRY)))
    sim.decide()
    job = replace(finished_job(sim, "code", 1, pod_read=False))
    sim.set_world(jobs={job.name: job})
    sim.decide()
    code = entry(sim.status, "code")
    assert code.phase == "Waiting"  # retried: another attempt may report its outputs
    assert "its Pod is gone with its outputs" in (code.message or "")


# --- refused by the API server ----------------------------------------------------------------


def test_a_rejected_job_fails_the_step_at_once_despite_retries() -> None:
    sim = Sim(inline(step("code", retries=RETRY), step("test", "code")))
    first = sim.decide()
    [request] = first.create_jobs
    rejected = JobObservation(
        name=request.job_name,
        step="code",
        index=None,
        attempt=1,
        state="Failed",
        reason=Reason.JOB_REJECTED,
        message='Job.batch "x" is invalid: spec.template.metadata.labels: Invalid value',
        pods_started=True,
        pod_read=True,
    )
    sim.set_world(jobs={request.job_name: rejected})
    sim.decide()
    code = entry(sim.status, "code")
    assert (code.phase, code.reason) == ("Failed", Reason.JOB_REJECTED)
    assert "the API server refused Job" in (code.message or "")
    assert "Invalid value" in (code.message or "")
    assert sim.status.phase == "Failed"
    assert entry(sim.status, "test").phase == "Skipped"


def test_a_rejected_child_run_fails_its_step() -> None:
    sim = Sim(inline(step("sub", childRun={"templateRef": {"name": "child"}})))
    sim.decide()
    name = entry(sim.status, "sub").child_run_name
    assert name is not None
    sim.set_world(child_runs={name: ChildRunObservation(name, "Rejected", message="forbidden")})
    sim.decide()
    sub = entry(sim.status, "sub")
    assert (sub.phase, sub.reason) == ("Failed", Reason.CHILD_RUN_REJECTED)


# --- a Job that cannot create its Pod ---------------------------------------------------------


def test_a_job_without_a_pod_says_why_then_fails_the_attempt_after_a_bounded_wait() -> None:
    sim = Sim(inline(step("code", retries={"limit": 1})))
    [request] = sim.decide().create_jobs
    created = sim.now
    waiting = JobObservation(
        name=request.job_name, step="code", index=None, attempt=1, state="Active",
        created_at=created,
    )  # fmt: skip
    sim.set_world(jobs={request.job_name: waiting})
    decision = sim.decide()
    assert decision.wake_at is not None and decision.wake_at > sim.now  # it will look again

    sim.tick(POD_START_CHECK.total_seconds() + 1)
    error = 'pods "x" is forbidden: error looking up service account team-a/missing'
    sim.set_world(jobs={request.job_name: replace(waiting, pod_create_error=error)})
    decision = sim.decide()
    code = entry(sim.status, "code")
    assert code.phase == "Running"
    assert "cannot create its Pod" in (code.message or "") and "service account" in (
        code.message or ""
    )
    timeout = sim.world.limits.pod_create_timeout
    assert decision.wake_at == created + timeout

    sim.tick(timeout.total_seconds())
    decision = sim.decide()
    code = entry(sim.status, "code")
    assert code.phase == "Waiting"  # the attempt failed; its retry comes
    assert request.job_name in decision.delete_jobs
    assert "cannot create its Pod" in (code.message or "")


def test_a_slow_job_without_an_error_is_never_failed() -> None:
    sim = Sim(inline(step("code")))
    [request] = sim.decide().create_jobs
    slow = JobObservation(
        name=request.job_name, step="code", index=None, attempt=1, state="Active",
        created_at=sim.now,
    )  # fmt: skip
    sim.set_world(jobs={request.job_name: slow})
    for _ in range(10):
        sim.tick(60)
        decision = sim.decide()
        assert entry(sim.status, "code").phase == "Running"
        assert decision.wake_at is not None


# --- a status someone else wrote --------------------------------------------------------------


def test_a_forged_terminal_phase_with_running_steps_fails_the_run() -> None:
    sim = Sim(inline(step("code"), step("test", "code")))
    [request] = sim.decide().create_jobs
    sim.status = sim.status.model_copy(update={"phase": "Succeeded"})
    # Not sim.decide(): its checks rightly refuse a terminal phase that changes; this one was
    # never the operator's.
    decision = decide(sim.view, sim.world)
    status = decision.status
    assert status.phase == "Failed"
    assert condition(status, "Succeeded")[:2] == ("False", Reason.INCONSISTENT_STATUS)
    assert "someone other than the operator" in (status.message or "")
    assert decision.delete_jobs == [request.job_name]
    assert phases(status) == {"code": "Cancelled", "test": "Skipped"}


def test_a_wiped_pinned_spec_fails_the_run_instead_of_pinning_again() -> None:
    sim = Sim(by_ref(), template=template(step("code")))
    sim.decide()
    sim.status = sim.status.model_copy(update={"pinned": None})
    sim.decide()
    assert sim.status.phase == "Failed"
    assert condition(sim.status, "Succeeded")[1] == Reason.INCONSISTENT_STATUS


def test_a_pinned_spec_that_no_longer_validates_fails_the_run() -> None:
    sim = Sim(by_ref(), template=template(step("code")))
    sim.decide()
    pinned = sim.status.pinned
    assert pinned is not None and pinned.template is not None
    broken = pinned.template.model_copy(update={"spec": {"steps": "not a list"}})
    sim.status = sim.status.model_copy(
        update={"pinned": pinned.model_copy(update={"template": broken})}
    )
    sim.decide()
    assert sim.status.phase == "Failed"
    assert "status.pinned no longer validates" in (sim.status.message or "")


# --- plans that cannot fit, or never end ------------------------------------------------------


def for_each_steps(count: int) -> list[dict]:
    return [step(f"fan{i}", forEach='["a"]') for i in range(count)]


@pytest.mark.parametrize(
    ("count", "problem"),
    [(1, None), (2, "MiB of outputs"), (11, "status entries")],
)
def test_the_worst_case_status_of_a_plan_is_checked_at_pin_time(
    count: int, problem: str | None
) -> None:
    problems = status_bound_problems(template(*for_each_steps(count)))
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems
    sim = Sim(inline(*for_each_steps(count)))
    sim.decide()
    if problem is None:
        assert sim.status.phase == "Running"
    else:
        assert sim.status.phase == "Failed"
        assert condition(sim.status, "Succeeded")[1] == "InvalidPlan"


def child(name: str, template_name: str) -> dict:
    return step(name, childRun={"templateRef": {"name": template_name}})


def test_templates_that_start_each_other_are_an_invalid_plan() -> None:
    a = template(child("to-b", "b"))
    b = template(step("work"), child("to-a", "a"))
    assert template_cycle("a", a, {"a": a, "b": b}) == ["a", "b", "a"]
    assert template_cycle("a", template(child("self", "a")), {}) == ["a", "a"]
    assert template_cycle(None, template(child("x", "b")), {"a": a, "b": b}) == ["b", "a", "b"]
    assert template_cycle("a", template(child("x", "c")), {"c": template(step("w"))}) is None
    sim = Sim(by_ref("a"), template=a)
    sim.set_world(templates={"a": a, "b": b})
    sim.decide()
    assert sim.status.phase == "Failed"
    assert "a → b → a" in (sim.status.message or "")


def test_a_missing_child_template_keeps_the_run_pending_with_a_reason() -> None:
    sim = Sim(inline(child("sub", "nowhere")))
    sim.set_world(templates={})
    decision = sim.decide()
    assert sim.status.phase == "Pending"
    assert condition(sim.status, "Ready")[1] == "TemplateMissing"
    assert ("Template", "nowhere") in decision.waiting_for


def test_child_runs_stop_at_the_depth_limit() -> None:
    sim = Sim(inline(child("sub", "child")))
    sim.set_world(limits=Limits(max_depth=2))
    deep = replace(sim.view, depth=2)
    decision = decide(deep, sim.world)
    assert decision.create_child_runs == []
    sub = entry(decision.status, "sub")
    assert (sub.phase, sub.reason) == ("Failed", Reason.CHILD_RUN_LIMIT)
    assert "depth 3" in (sub.message or "")


def test_child_runs_stop_at_the_size_limit_of_their_tree() -> None:
    sim = Sim(inline(step("fan", forEach='["a","b","c"]', childRun={"templateRef": {"name": "c"}})))
    sim.set_world(limits=Limits(max_runs=10), tree_size=8)
    sim.decide()
    decision = sim.decide()  # items start
    started = [e for e in sim.status.steps or [] if e.index is not None and e.child_run_name]
    limited = [e for e in sim.status.steps or [] if e.reason == Reason.CHILD_RUN_LIMIT]
    assert len(started) == 2 and len(limited) == 1, decision


# --- outputs and failures of the operator itself ----------------------------------------------


def test_outputs_nested_too_deeply_are_a_failure_not_a_crash() -> None:
    for depth in (MAX_OUTPUT_NESTING + 1, 1500):
        text = '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"
        assert parse_outputs(text) == (
            {},
            f"outputs are nested more than {MAX_OUTPUT_NESTING} levels deep",
        )
    assert parse_outputs('{"a": [[1]]}') == ({"a": [[1]]}, None)


def test_abort_stops_everything_and_a_successful_decision_clears_a_reconcile_error() -> None:
    sim = Sim(inline(step("code"), step("test", "code")))
    [request] = sim.decide().create_jobs
    shown = reconcile_error(sim.status, sim.now, "ApiException", "the API server is down")
    assert condition(shown, "ReconcileError")[0] == "True"
    sim.status = shown
    sim.decide()
    assert not [c for c in sim.status.conditions or [] if c.type == "ReconcileError"]

    failed = abort_run(view(sim.spec, sim.status), sim.now, Reason.RECONCILE_ERROR, "boom")
    assert failed.status.phase == "Failed"
    assert failed.delete_jobs == [request.job_name]
    assert condition(failed.status, "Succeeded")[1] == Reason.RECONCILE_ERROR
    RunStatus.model_validate(failed.status.to_dict())
