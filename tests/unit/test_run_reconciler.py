"""One reconcile pass of RunReconciler against a fake API server: what it writes when the server
refuses a Job or a status, when a Job was created before a status write that never happened, when
a Pod is gone or cannot be created, and when reconciling itself keeps failing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY
from urllib3.exceptions import MaxRetryError, ProtocolError

from nofx.api.reasons import Reason
from nofx.api_errors import Conflict, Rejected
from nofx.mirror.store import Store
from nofx.mirror.writer import MirrorWriter
from nofx.reconcilers.errors import is_transient
from nofx.reconcilers.run_reconciler import MAX_CONFLICT_RETRIES
from tests.unit.builders import condition
from tests.unit.run_harness import NAMESPACE, RETRY, Harness, step

pytestmark = pytest.mark.usefixtures("events")


def errors_counted(transient: bool) -> float:
    labels = {"transient": str(transient).lower()}
    return REGISTRY.get_sample_value("nofx_reconcile_errors_total", labels) or 0.0


def running_code_step(*steps: dict[str, object]) -> Harness:
    """A Run whose step `code` runs, its Job finished: the next pass reads the Job's Pod."""
    h = Harness(*(steps or (step("code"),)))
    h.reconcile()
    h.finish_job(h.job_name("code", 1), outputs={"result": "ok"})
    return h


# --- a reconcile that raises ----------------------------------------------------------------


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), RecursionError("maximum recursion depth exceeded")]
)
def test_a_fault_fails_the_run_after_three_tries_and_stops_its_jobs(error: Exception) -> None:
    h = running_code_step()
    h.kube.fail_next("job_pod", 3, error)
    counted = errors_counted(transient=False)
    h.attempt()
    h.attempt()
    assert h.status.phase == "Running"
    assert h.kube.called("delete_job") == []
    h.attempt()
    assert h.status.phase == "Failed"
    _, reason, message = condition(h.status, "Succeeded")
    assert reason == Reason.RECONCILE_ERROR
    assert f"failed on this Run 3 times: {type(error).__name__}: {error}" in message
    assert h.step("code").phase == "Cancelled"
    assert h.kube.called("delete_job") == [(NAMESPACE, h.job_name("code", 1))]
    assert errors_counted(transient=False) == counted + 3


@pytest.mark.parametrize(
    "error",
    [
        ApiException(status=503, reason="Service Unavailable"),
        ProtocolError("Connection aborted."),
        MaxRetryError(None, "/apis/nofx.dev/v1", reason=ConnectionRefusedError()),  # type: ignore[arg-type]
    ],
)
def test_an_outage_is_shown_after_six_tries_and_never_fails_the_run(error: Exception) -> None:
    h = running_code_step()
    h.kube.fail_next("job_pod", 8, error)
    counted = errors_counted(transient=True)
    for _ in range(5):
        h.attempt()
    assert h.status.phase == "Running"
    assert not [c for c in h.status.conditions or [] if c.type == "ReconcileError"]
    h.attempt()
    shown, reason, message = condition(h.status, "ReconcileError")
    assert (shown, reason) == ("True", type(error).__name__)
    assert message.startswith("retrying after 6 failures")
    h.attempt()
    h.attempt()
    assert condition(h.status, "ReconcileError")[2].startswith("retrying after 8 failures")
    assert (h.status.phase, h.step("code").phase) == ("Running", "Running")
    assert h.kube.called("delete_job") == []
    assert errors_counted(transient=True) == counted + 8
    h.attempt()  # the outage is over
    assert h.step("code").phase == "Succeeded"
    assert not [c for c in h.status.conditions or [] if c.type == "ReconcileError"]


def test_failures_are_counted_per_run() -> None:
    h = running_code_step()
    for _ in range(5):
        h.reconciler.backoff.when((NAMESPACE, "other"))
    h.kube.fail_next("job_pod", 3, RuntimeError("boom"))
    h.attempt()
    h.attempt()
    assert h.status.phase == "Running"
    h.attempt()
    assert h.status.phase == "Failed"


def test_a_success_forgets_the_failures_before_it() -> None:
    h = running_code_step(step("code"), step("test", "code"))
    h.kube.fail_next("job_pod", 2, RuntimeError("boom"))
    h.attempt()
    h.attempt()
    h.attempt()  # succeeds: code done, test started
    h.finish_job(h.job_name("test", 1))
    h.kube.fail_next("job_pod", 2, RuntimeError("boom"))
    h.attempt()
    h.attempt()
    assert h.status.phase == "Running"


def test_a_conflicting_status_write_reads_the_run_again_and_decides_again() -> None:
    h = Harness(step("code"))
    h.kube.fail_next("patch_status", 1, Conflict("runs/demo changed"))
    h.reconcile()
    assert [name for name, _ in h.kube.calls] == [
        # With the body its watch event delivered; the namespace tells the Run's account.
        *("namespace_labels", "create_job", "patch_status"),
        # The Job exists already: a 409, no second Job.
        *("get", "namespace_labels", "create_job", "patch_status"),
    ]
    assert [key[2] for key in h.kube.objects if key[0] == "jobs"] == [h.job_name("code", 1)]
    assert h.step("code").phase == "Running"


def test_repeated_conflicts_end_the_pass_with_a_conflict_for_the_error_budget() -> None:
    h = Harness(step("code"))
    h.kube.fail_next("patch_status", MAX_CONFLICT_RETRIES, Conflict("runs/demo changed"))
    with pytest.raises(Conflict, match="conflicts in a row"):
        h.reconcile()
    assert is_transient(Conflict("x")), "retried with backoff while it lasts"
    assert len(h.kube.called("get")) == MAX_CONFLICT_RETRIES - 1  # the first had the event's
    assert len(h.kube.called("patch_status")) == MAX_CONFLICT_RETRIES
    assert h.status.phase is None


# --- what the API server refuses ------------------------------------------------------------


def test_a_refused_job_fails_its_step_with_the_servers_words_without_retrying(
    events: list[tuple[str, str, str]],
) -> None:
    h = Harness(step("code", retries=RETRY))
    words = 'Job.batch "x" is invalid: spec.template.spec.containers[0].image: Required value'
    h.kube.fail_next("create_job", 1, Rejected(422, words))
    h.reconcile()
    code = h.step("code")
    assert (code.phase, code.reason) == ("Failed", Reason.JOB_REJECTED)
    assert words in (code.message or "")
    assert h.status.phase == "Failed"
    assert ("Warning", "StepFailed") in [(kind, reason) for kind, reason, _ in events]
    h.reconcile()
    assert len(h.kube.called("create_job")) == 1


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (Rejected(413, "Request entity too large: limit is 3145728"), Reason.STATUS_TOO_LARGE),
        (Rejected(422, "etcdserver: request is too large"), Reason.STATUS_TOO_LARGE),
        (Rejected(422, "status.steps[0].phase: Unsupported value"), Reason.STATUS_REJECTED),
    ],
)
def test_a_refused_status_fails_the_run_and_stops_the_jobs_it_started(
    refusal: Rejected, reason: Reason
) -> None:
    h = Harness(step("code"))
    h.kube.fail_next("patch_status", 1, refusal)
    h.reconcile()
    assert h.status.phase == "Failed"
    _, written_reason, message = condition(h.status, "Succeeded")
    assert written_reason == reason
    assert refusal.message in message
    assert h.kube.called("delete_job") == [(NAMESPACE, h.job_name("code", 1))]
    assert not [key for key in h.kube.objects if key[0] == "jobs"]


def test_a_status_over_the_size_limit_fails_the_run() -> None:
    h = Harness(step("code", inputs={"prompt": "x" * 3000}))
    h.kube.refuse_status_over(2000, http_status=422)
    h.reconcile()
    assert (h.status.phase, condition(h.status, "Succeeded")[1]) == ("Failed", "StatusTooLarge")
    assert not [key for key in h.kube.objects if key[0] == "jobs"]


def test_when_even_the_failure_is_too_large_only_the_failure_is_kept() -> None:
    h = running_code_step(step("code"), step("test", "code"))
    h.kube.refuse_status_over(h.kube.status_size(NAMESPACE, "demo"), http_status=413)
    patch_status = h.kube.patch_status

    def bounded(*args: Any, **kwargs: Any) -> Any:
        assert len(h.kube.called("patch_status")) < 10, "the status write is tried without end"
        return patch_status(*args, **kwargs)

    h.kube.patch_status = bounded  # type: ignore[method-assign]
    h.reconcile()  # code succeeded, test started: a larger status, refused; so is the failure
    assert len(h.kube.called("patch_status")) == 1 + 3  # the first pass, then three tries
    status = h.body["status"]
    assert set(status) <= {
        *("phase", "conditions", "observedGeneration", "startedAt", "finishedAt"),
        *("message", "usage", "audit"),
    }
    assert (status["phase"], condition(h.status, "Succeeded")[1]) == ("Failed", "StatusTooLarge")
    assert (NAMESPACE, h.job_name("test", 1)) in h.kube.called("delete_job")
    assert ("jobs", NAMESPACE, h.job_name("test", 1)) not in h.kube.objects


# --- Jobs and Pods the status does not know about, or that are gone -------------------------


def test_a_job_created_before_a_lost_status_write_is_read_not_created_again() -> None:
    h = running_code_step(step("code"), step("test", "code"))
    h.kube.fail_next("patch_status", 1, ApiException(status=503))
    h.attempt()  # created test's Job, then could not record it
    assert h.step("test").phase == "Pending"
    h.finish_job(h.job_name("test", 1), outputs={"verdict": "green"})
    h.kube.calls.clear()
    h.reconcile()
    assert h.kube.called("create_job") == []
    assert (h.step("test").phase, h.step("test").outputs) == ("Succeeded", {"verdict": "green"})
    assert h.status.phase == "Succeeded"


def test_a_job_created_before_the_first_status_write_is_read_with_its_outputs() -> None:
    h = Harness(step("code"))
    h.kube.fail_next("patch_status", 1, ApiException(status=503))
    h.attempt()  # pinned the plan and created code's Job, then could not record it
    assert h.status.phase is None
    h.finish_job(h.job_name("code", 1), outputs={"result": "ok"})
    h.reconcile()
    assert h.kube.called("job_pod") == [(NAMESPACE, h.job_name("code", 1))]
    assert (h.step("code").phase, h.step("code").outputs) == ("Succeeded", {"result": "ok"})


def test_a_finished_job_whose_pod_is_gone_fails_with_outputs_lost() -> None:
    h = Harness(step("code"))
    h.reconcile()
    h.finish_job(h.job_name("code", 1), pod=False)
    h.reconcile()
    code = h.step("code")
    assert (code.phase, code.reason, code.outputs) == ("Failed", Reason.OUTPUTS_LOST, None)
    assert h.status.phase == "Failed"


def test_a_job_that_cannot_create_its_pod_fails_its_step_with_the_event_message() -> None:
    h = Harness(step("code"))
    h.reconcile()
    name = h.job_name("code", 1)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    h.kube.objects[("jobs", NAMESPACE, name)]["metadata"]["creationTimestamp"] = long_ago.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    words = 'pods "x" is forbidden: error looking up service account team-a/robot'
    h.kube.create_errors[(NAMESPACE, name)] = words
    h.reconcile()
    code = h.step("code")
    assert (code.phase, code.reason) == ("Failed", Reason.POD_CREATE_FAILED)
    assert words in (code.message or "")
    assert h.kube.called("pod_create_error") == [(NAMESPACE, name)]
    assert (NAMESPACE, name) in h.kube.called("delete_job")


# --- the writes of a Run ----------------------------------------------------------------------


def test_a_three_step_run_costs_a_status_write_per_step_a_job_each_and_one_event(
    events: list[tuple[str, str, str]],
) -> None:
    """Each pass writes one status that both records the step that finished and starts the
    next; the only Event says how the Run ended (issue 14: the operator's write budget)."""
    h = Harness(step("a"), step("b", "a"), step("c", "b"))
    h.reconcile()
    for name in "abc":
        h.finish_job(h.job_name(name, 1))
        h.reconcile()
        h.reconcile()  # the watch event of its own write changes nothing
    assert h.status.phase == "Succeeded"
    reads = ("get", "get_job", "job_pod", "namespace_labels")
    writes = [name for name, _ in h.kube.calls if name not in reads]
    assert sorted(writes) == sorted(["patch_status"] * 4 + ["create_job"] * 3)
    assert [(kind, reason) for kind, reason, _ in events] == [("Normal", "RunSucceeded")]
    assert h.kube.called("get") == [], "a pass a Job triggered had the body of our last write"


def test_stored_audit_entries_ride_along_with_a_status_write_but_never_cause_one() -> None:
    """Dropping what the mirror stored is no reason to write: a pass that changes nothing
    else leaves them; the next pass that writes anyway drops them with its own news."""
    h = Harness(step("a"), step("b"))
    h.reconciler.mirror = MirrorWriter(cast(Store, None), h.kube)  # type: ignore[arg-type]
    h.reconcile()
    first = [entry["seq"] for entry in h.body["status"]["audit"]["pending"]]
    key = (NAMESPACE, h.body["metadata"]["name"])
    assert h.reconciler.mirror.stored.written(key, h.body) is None  # stored, left to us
    writes = len(h.kube.called("patch_status"))
    h.reconcile()
    assert len(h.kube.called("patch_status")) == writes, "nothing changed: no write"
    assert [entry["seq"] for entry in h.body["status"]["audit"]["pending"]] == first
    h.finish_job(h.job_name("a", 1))
    h.reconcile()
    pending = h.body["status"]["audit"]["pending"]
    assert len(h.kube.called("patch_status")) == writes + 1
    assert pending and all(entry.get("seq", 0) not in first for entry in pending)
