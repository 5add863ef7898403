"""The Pod watch of finished steps: what it keeps, for how long, and that a Run reads a
succeeded step's outputs from it without a LIST, and lists whatever it did not see."""

from __future__ import annotations

import json
from typing import Any, cast

from nofx.apiserver import ApiServer
from nofx.builders.job import CONTAINER_NAME
from nofx.builders.job_status import observe_job, with_pod
from nofx.reconcilers.step_pods import JOB_NAME_LABEL, KEEP_SECONDS, StepPods
from tests.unit.run_harness import NAMESPACE, Harness, step


def pod(job: str, phase: str, *, container: str = CONTAINER_NAME, **terminated: Any) -> dict:
    state = {"terminated": terminated} if terminated else {"running": {}}
    return {
        "metadata": {"name": f"{job}-x", "namespace": NAMESPACE, "labels": {JOB_NAME_LABEL: job}},
        "status": {"phase": phase, "containerStatuses": [{"name": container, "state": state}]},
    }


def pods() -> StepPods:
    return StepPods(cast(ApiServer, None))


def test_what_the_watch_lists_and_changes_is_seen() -> None:
    watch = pods()
    watch.listed("", [pod("j1", "Succeeded", exitCode=0, message="{}")])
    watch.changed("", "MODIFIED", pod("j2", "Succeeded", exitCode=0, message="{}"))
    watch.changed("", "DELETED", pod("j3", "Succeeded", exitCode=0, message="{}"))
    assert [watch.succeeded(NAMESPACE, job) is not None for job in ("j1", "j2", "j3")] == [
        True,
        True,
        False,
    ], "a deleted Pod's event adds nothing: the Pod's success was seen before, if ever"


def test_a_pod_that_succeeded_is_kept_with_its_agent_containers_termination() -> None:
    watch = pods()
    watch.see(pod("j1", "Running"), now=0)
    assert watch.succeeded(NAMESPACE, "j1") is None, "a running Pod has no outputs yet"
    watch.see(pod("j1", "Succeeded", exitCode=0, message='{"a": 1}'), now=1)
    job = observe_job({"metadata": {"name": "j1"}, "status": {"succeeded": 1}})
    read = with_pod(job, watch.succeeded(NAMESPACE, "j1"))
    assert (read.pod_read, read.termination_message, read.exit_code) == (True, '{"a": 1}', 0)
    assert watch.succeeded("elsewhere", "j1") is None


def test_failed_pods_and_other_containers_are_not_kept() -> None:
    watch = pods()
    watch.see(pod("j1", "Failed", exitCode=1, message="boom"), now=0)
    watch.see(pod("j2", "Succeeded", container="sidecar", exitCode=0), now=0)
    watch.see({"metadata": {"name": "p", "namespace": NAMESPACE}, "status": {}}, now=0)
    assert watch.held() == 0


def test_what_it_keeps_is_forgotten_after_a_while() -> None:
    watch = pods()
    watch.see(pod("j1", "Succeeded", exitCode=0, message="{}"), now=0)
    watch.see(pod("j2", "Succeeded", exitCode=0, message="{}"), now=KEEP_SECONDS / 2)
    watch.see(pod("j3", "Running"), now=KEEP_SECONDS + 1)
    assert watch.succeeded(NAMESPACE, "j1") is None
    assert watch.succeeded(NAMESPACE, "j2") is not None


def test_a_run_reads_a_succeeded_step_from_the_watch_and_lists_only_what_it_missed() -> None:
    h = Harness(step("a"), step("b", "a"))
    watch = pods()
    h.reconciler.step_pods = watch
    h.reconcile()
    h.finish_job(h.job_name("a", 1), outputs={"x": 1})
    watch.see(pod(h.job_name("a", 1), "Succeeded", exitCode=0, message=json.dumps({"x": 2})), 0)
    h.reconcile()
    assert h.kube.called("job_pod") == [], "the watch saw a's Pod"
    assert h.step("a").outputs == {"x": 2}, "the outputs are the ones the watch saw"
    h.finish_job(h.job_name("b", 1), outputs={"y": 1})  # its Pod event not seen yet
    h.reconcile()
    assert h.kube.called("job_pod") == [(NAMESPACE, h.job_name("b", 1))]
    assert (h.step("b").outputs, h.status.phase) == ({"y": 1}, "Succeeded")


def test_a_failed_step_lists_its_pods() -> None:
    h = Harness(step("a"))
    h.reconciler.step_pods = pods()
    h.reconcile()
    h.finish_job(h.job_name("a", 1), exit_code=3)
    h.reconcile()
    assert h.kube.called("job_pod") == [(NAMESPACE, h.job_name("a", 1))]
    assert h.step("a").phase == "Failed"
