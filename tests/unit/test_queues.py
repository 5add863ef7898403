"""Kueue: which queue a Run's steps use, the queue fields of their Jobs, what a Workload says,
and the Queued phase of steps and Runs while Kueue has not admitted them."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from nofx.api.reasons import Reason
from nofx.builders.child_run import build_child_run
from nofx.builders.job import build_job
from nofx.builders.job_status import observe_job
from nofx.builders.workload_status import observe_workload, workload_job
from nofx.changes import transitions
from nofx.planner.facts import Admission, Limits
from tests.unit.builders import T0, Sim, by_ref, condition, entry, inline, step, template
from tests.unit.test_jobs import RUN, request

KUEUE = Limits(kueue=True)
PENDING = Admission(
    admitted=False,
    reason="Pending",
    message="couldn't assign flavors to pod set main: insufficient unused quota for pods in "
    "flavor default-flavor, 1 more needed",
)
MISSING = Admission(admitted=False, reason="Inadmissible", message="LocalQueue gold doesn't exist")
ADMITTED = Admission(admitted=True, cluster_queue="acme")


def queued_sim(*steps: dict[str, Any], **spec: Any) -> Sim:
    sim = Sim(inline(*(steps or (step("a"),)), **spec))
    sim.set_world(limits=KUEUE)
    return sim


# --- the Job ---------------------------------------------------------------------------------


def test_job_of_a_queue_is_created_suspended_and_labelled_with_it() -> None:
    job = build_job(RUN, replace(request(timeout=600), queue_name="gold"))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gold"
    assert job["spec"]["suspend"] is True
    # Kubernetes resets startTime when it resumes a Job: the deadline counts from admission.
    assert job["spec"]["activeDeadlineSeconds"] == 600
    observed = observe_job(job)
    assert (observed.queue_name, observed.suspended) == ("gold", True)


def test_job_without_a_queue_is_neither_suspended_nor_labelled_for_kueue() -> None:
    job = build_job(RUN, request())
    assert "suspend" not in job["spec"]
    assert not any(key.startswith("kueue.x-k8s.io/") for key in job["metadata"]["labels"])
    observed = observe_job(job)
    assert (observed.queue_name, observed.suspended) == (None, False)


def test_the_queue_wait_is_from_the_jobs_creation_to_its_first_admission() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    created = sim.now
    sim.set_world(
        jobs={name: replace(job, created_at=created) for name, job in sim.world.jobs.items()}
    )
    sim.tick(42)
    sim.queue("a", ADMITTED)
    assert sim.decide().queue_waits == [42.0]
    sim.queue("a", replace(MISSING, evicted=True))
    assert sim.decide().queue_waits == []
    sim.tick(5)
    sim.queue("a", ADMITTED)
    assert sim.decide().queue_waits == []  # readmitted after an eviction: not a first wait


def test_a_queued_attempt_is_metered_with_its_queue_and_wait_apart_from_its_run_time() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    sim.set_world(
        jobs={name: replace(job, created_at=sim.now) for name, job in sim.world.jobs.items()}
    )
    sim.tick(42)
    sim.queue("a", replace(ADMITTED, admitted_at=sim.now))
    sim.decide()
    sim.tick(3)
    sim.succeed("a")
    [attempt] = sim.decide().finished_attempts
    assert (attempt.queue, attempt.queued_seconds) == ("gold", 42.0)
    assert attempt.wall_seconds < 42, "the wait is not billed"
    plain = Sim(inline(step("a")))
    plain.decide()
    plain.succeed("a")
    [unqueued] = plain.decide().finished_attempts
    assert (unqueued.queue, unqueued.queued_seconds) == (None, None)


# --- the Workload ----------------------------------------------------------------------------


def workload(*conditions: dict[str, str], cluster_queue: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conditions)}
    if cluster_queue:
        status["admission"] = {"clusterQueue": cluster_queue}
    return {
        "metadata": {
            "name": "job-demo-a-1-3c2f1",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "demo-a-1"}],
        },
        "status": status,
    }


def test_workload_names_its_job_and_says_why_it_waits() -> None:
    body = workload(
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no room"}
    )
    assert workload_job(body) == "demo-a-1"
    assert observe_workload(body) == Admission(admitted=False, reason="Pending", message="no room")


def test_workload_admitted_names_its_cluster_queue_and_when() -> None:
    at = "2030-01-01T12:00:42Z"
    body = workload(
        {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
        {"type": "Admitted", "status": "True", "reason": "Admitted", "lastTransitionTime": at},
        cluster_queue="acme",
    )
    assert observe_workload(body) == replace(ADMITTED, admitted_at=T0 + timedelta(seconds=42))


@pytest.mark.parametrize(
    ("suspended", "admission", "queued"),
    [
        (True, None, True),  # no Workload yet: the suspension says it waits
        (False, None, False),
        (True, ADMITTED, False),  # admitted: the Job controller resumes it in a moment
        (False, PENDING, True),  # Kueue took the admission back; the Pod is being stopped
    ],
)
def test_the_workload_decides_whether_a_job_is_queued(
    suspended: bool, admission: Admission | None, queued: bool
) -> None:
    job = observe_job(build_job(RUN, replace(request(), queue_name="gold")))
    assert replace(job, suspended=suspended, admission=admission).queued is queued
    assert not replace(job, queue_name=None, suspended=suspended, admission=admission).queued


def test_workload_evicted_says_so_with_kueues_reason() -> None:
    body = workload(
        {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "requeued"},
        {"type": "Evicted", "status": "True", "reason": "Preempted", "message": "fair sharing"},
    )
    found = observe_workload(body)
    assert (found.admitted, found.evicted, found.reason) == (False, True, "Preempted")
    assert found.message == "fair sharing"


def test_a_workload_of_something_else_has_no_job() -> None:
    assert workload_job({"metadata": {"ownerReferences": [{"kind": "Pod", "name": "p"}]}}) is None


# --- which queue -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_queue", "template_queue", "namespace_queue", "expected"),
    [
        ("run-q", "tpl-q", "ns-q", "run-q"),
        (None, "tpl-q", "ns-q", "tpl-q"),
        (None, None, "ns-q", "ns-q"),
        (None, None, None, None),
    ],
)
def test_the_queue_is_the_runs_else_the_templates_else_the_namespaces(
    run_queue: str | None,
    template_queue: str | None,
    namespace_queue: str | None,
    expected: str | None,
) -> None:
    tpl = template(step("a"), queueName=template_queue) if template_queue else template(step("a"))
    spec = by_ref(queueName=run_queue) if run_queue else by_ref()
    sim = Sim(spec, template=tpl)
    sim.set_world(limits=KUEUE, namespace_queue=namespace_queue)
    decision = sim.decide()
    assert decision.status.queue_name == expected
    [job] = decision.create_jobs
    assert job.queue_name == expected
    assert entry(decision.status, "a").phase == ("Queued" if expected else "Running")


def test_a_named_queue_without_kueue_keeps_the_run_pending_and_says_where_it_came_from() -> None:
    sim = Sim(inline(step("a")))
    sim.set_world(namespace_queue="gold")
    decision = sim.decide()
    assert decision.status.phase == "Pending"
    assert not decision.create_jobs
    state, reason, message = condition(decision.status, "Ready")
    assert (state, reason) == ("False", Reason.QUEUEING_DISABLED)
    assert "nofx.dev/queue-name names the Kueue LocalQueue gold" in message
    assert "--kueue" in message


def test_a_child_run_names_its_parents_queue_from_the_parents_first_pass() -> None:
    delegate = {"name": "sub", "childRun": {"templateRef": {"name": "leaf"}}}
    sim = queued_sim(delegate, queueName="gold")
    [request] = sim.decide().create_child_runs  # the pass that pins the queue starts the child
    assert request.queue_name == "gold"
    assert build_child_run(sim.view, "acme", request)["spec"]["queueName"] == "gold"
    unqueued = replace(request, queue_name=None)
    assert "queueName" not in build_child_run(sim.view, "acme", unqueued)["spec"]


# --- Queued, admitted, evicted -----------------------------------------------------------------


def test_a_queued_step_shows_kueues_message_and_runs_once_admitted() -> None:
    sim = queued_sim(step("a"), step("b", "a"), queueName="gold")
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason, a.attempts) == ("Queued", Reason.QUEUED, 1)
    assert sim.status.phase == "Queued"

    sim.queue("a", PENDING)
    sim.tick(30)
    decision = sim.decide()
    assert not decision.create_jobs  # waiting is not a new attempt
    assert decision.wake_at is None  # no timer: Workload events wake the Run
    a = entry(sim.status, "a")
    assert a.phase == "Queued"
    assert "insufficient unused quota for pods" in (a.message or "")
    state, reason, message = condition(sim.status, "Succeeded")
    assert (state, reason) == ("Unknown", Reason.QUEUED)
    assert "step a: attempt 1 queued in LocalQueue gold" in message

    sim.queue("a", ADMITTED)
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason, a.attempts) == ("Running", None, 1)
    assert "admitted by ClusterQueue acme" in (a.message or "")
    assert sim.status.phase == "Running"

    sim.succeed("a")
    sim.decide()
    assert entry(sim.status, "b").phase == "Queued"
    sim.queue("b", ADMITTED)
    sim.succeed("b")
    assert sim.decide().status.phase == "Succeeded"


def test_a_missing_queue_is_inadmissible_in_the_runs_condition() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    sim.queue("a", MISSING)
    sim.decide()
    assert entry(sim.status, "a").reason == Reason.QUEUE_INADMISSIBLE
    state, reason, message = condition(sim.status, "Succeeded")
    assert (state, reason) == ("Unknown", Reason.QUEUE_INADMISSIBLE)
    assert "LocalQueue gold doesn't exist" in message


def test_eviction_queues_the_same_attempt_again_and_is_a_transition() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    sim.queue("a", ADMITTED)
    sim.decide()
    running = sim.status.model_copy(deep=True)
    evicted = Admission(admitted=False, reason="Preempted", message="fair sharing", evicted=True)
    sim.queue("a", evicted)
    decision = sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason, a.attempts) == ("Queued", Reason.EVICTED, 1)
    assert not decision.create_jobs and not decision.delete_jobs
    assert "evicted by Kueue" in (a.message or "")
    [change] = [t for t in transitions(running, sim.status) if t.step == "a"]
    assert (change.from_phase, change.to_phase, change.reason) == (
        "Running",
        "Queued",
        "StepQueued",
    )


def test_a_job_kueue_makes_no_workload_for_says_so_after_a_while() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    sim.set_world(jobs={n: replace(j, created_at=sim.now) for n, j in sim.world.jobs.items()})
    sim.tick(1)
    assert sim.decide().wake_at == T0 + timedelta(seconds=30)
    assert "waiting for Kueue's Workload" in (entry(sim.status, "a").message or "")
    sim.tick(30)
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason) == ("Queued", Reason.QUEUED)  # Kueue may come: not a failure
    assert "Kueue made no Workload for it in 30s: is Kueue running" in (a.message or "")


def test_a_long_queue_is_no_pod_start_failure() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    sim.queue("a", PENDING)
    sim.tick(3600)
    sim.decide()
    assert entry(sim.status, "a").phase == "Queued"


def test_cancel_deletes_a_queued_job() -> None:
    sim = queued_sim(queueName="gold")
    sim.decide()
    job = entry(sim.status, "a").job_name
    sim.edit(cancel=True)
    decision = sim.decide()
    assert decision.delete_jobs == [job]
    assert entry(sim.status, "a").phase == "Cancelled"


def test_queued_for_each_items_count_against_max_parallel() -> None:
    sim = queued_sim(step("fan", forEach="{{ params.items }}", maxParallel=2), queueName="gold")
    sim.edit(parameters={"items": [1, 2, 3]})
    sim.decide()
    assert [e.phase for e in sim.status.steps or [] if e.index is not None] == [
        "Queued",
        "Queued",
        "Pending",
    ]
    assert sim.status.phase == "Queued"  # the forEach step's own entry runs nothing itself
