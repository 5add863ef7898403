"""Runs reconciled into Jobs by the real operator on the real control plane."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step, steps_by_name, template


def test_linear_run_succeeds_with_outputs_passed_downstream(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        template(
            "linear",
            [
                step("plan", inputs={"task": "{{ params.task }}"}),
                step("code", inputs={"plan": "{{ steps.plan.outputs.task }}"}, dependsOn=["plan"]),
                step(
                    "review", inputs={"code": "{{ steps.code.outputs.plan }}"}, dependsOn=["code"]
                ),
            ],
            parameters=[{"name": "task", "required": True}],
        ),
        run("linear-1", templateRef={"name": "linear"}, parameters={"task": "write docs"}),
    )
    body = wait_for_phase(kubectl, namespace, "linear-1", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    steps = steps_by_name(body)
    assert steps["review"]["outputs"] == {"code": "write docs"}
    assert body["status"]["progress"] == "3/3"
    kubectl("wait", "-n", namespace, "run/linear-1", "--for=condition=Succeeded", "--timeout=5s")
    jobs = kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/run=linear-1")["items"]
    assert sorted(j["metadata"]["labels"]["nofx.dev/step"] for j in jobs) == [
        "code",
        "plan",
        "review",
    ]
    # Who wrote what, as `kubectl get --show-managed-fields` tells it: the operator by name.
    shown = kubectl.json("get", "run", "linear-1", "-n", namespace, "--show-managed-fields")
    managers = {(f["manager"], f.get("subresource")) for f in shown["metadata"]["managedFields"]}
    assert ("nofx-operator", "status") in managers, managers
    job_name = jobs[0]["metadata"]["name"]
    job = kubectl.json("get", "job", job_name, "-n", namespace, "--show-managed-fields")
    assert "nofx-operator" in {f["manager"] for f in job["metadata"]["managedFields"]}


def events_of(kubectl: Kubectl, namespace: str, run_name: str) -> list[str]:
    events = kubectl.json(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={run_name}"
    )["items"]
    return [
        event["reason"]
        for event in sorted(events, key=lambda e: e["metadata"]["creationTimestamp"])
    ]


def test_dag_fans_out_in_parallel_and_fans_in(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    slow = {"kwok.nofx.dev/duration": "2s"}
    apply(
        kubectl,
        namespace,
        agent("echo"),
        agent("slow", slow),
        run(
            "dag",
            steps=[
                step("plan", inputs={"n": "1"}),
                step("backend", "slow", dependsOn=["plan"], inputs={"part": "backend"}),
                step("frontend", "slow", dependsOn=["plan"], inputs={"part": "frontend"}),
                step(
                    "merge",
                    dependsOn=["backend", "frontend"],
                    inputs={
                        "b": "{{ steps.backend.outputs.part }}",
                        "f": "{{ steps.frontend.outputs.part }}",
                    },
                ),
            ],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "dag", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    steps = steps_by_name(body)
    assert steps["merge"]["outputs"] == {"b": "backend", "f": "frontend"}
    # Both branches ran at the same time: each started before the other finished.
    backend, frontend = steps["backend"], steps["frontend"]
    assert (
        backend["startedAt"] < frontend["finishedAt"]
        and frontend["startedAt"] < backend["finishedAt"]
    )
    assert steps["merge"]["startedAt"] >= max(backend["finishedAt"], frontend["finishedAt"])


def test_retry_then_success(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        namespace,
        agent("flaky", {"kwok.nofx.dev/fail-attempts": "1,2", "kwok.nofx.dev/exit-code": "7"}),
        run(
            "flaky",
            steps=[
                step(
                    "work",
                    "flaky",
                    retries={"limit": 3, "backoff": {"duration": "1s", "factor": 1}},
                )
            ],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "flaky", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    work = steps_by_name(body)["work"]
    assert work["attempts"] == 3
    jobs = kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/run=flaky")["items"]
    assert sorted(j["metadata"]["labels"]["nofx.dev/attempt"] for j in jobs) == ["1", "2", "3"]
    assert "StepRetrying" in events_of(kubectl, namespace, "flaky")


def test_retries_exhausted_fail_the_run(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent(
            "broken",
            {"kwok.nofx.dev/exit-code": "3", "kwok.nofx.dev/message": "model quota exceeded"},
        ),
        run(
            "broken",
            steps=[step("work", "broken", retries={"limit": 1, "backoff": {"duration": "1s"}})],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "broken", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Failed"
    work = steps_by_name(body)["work"]
    assert work["phase"] == "Failed" and work["attempts"] == 2
    assert "exit code 3: model quota exceeded after 2 attempts" in work["message"]
    succeeded = next(c for c in body["status"]["conditions"] if c["type"] == "Succeeded")
    assert succeeded["status"] == "False" and "model quota exceeded" in succeeded["message"]
    reasons = events_of(kubectl, namespace, "broken")
    assert "StepFailed" in reasons and "RunFailed" in reasons


def test_step_timeout(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        namespace,
        agent("sleepy", {"kwok.nofx.dev/duration": "1h"}),
        run("sleepy", steps=[step("work", "sleepy", timeout="2s")]),
    )
    body = wait_for_phase(kubectl, namespace, "sleepy", {"Succeeded", "Failed"})
    work = steps_by_name(body)["work"]
    assert body["status"]["phase"] == "Failed"
    assert work["message"].startswith("timed out after 2s"), work
    [job] = kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/run=sleepy")["items"]
    assert job["spec"]["activeDeadlineSeconds"] == 2


def test_run_timeout_stops_running_steps(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("sleepy", {"kwok.nofx.dev/duration": "1h"}),
        run(
            "deadline",
            timeout="3s",
            steps=[step("work", "sleepy"), step("after", "sleepy", dependsOn=["work"])],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "deadline", {"Succeeded", "Failed"})
    steps = steps_by_name(body)
    assert body["status"]["phase"] == "Failed"
    assert "exceeded its timeout of 3s" in body["status"]["message"]
    assert steps["work"]["phase"] == "Cancelled" and steps["after"]["phase"] == "Skipped"
    _wait_no_jobs(kubectl, namespace, "deadline")


def _wait_no_jobs(kubectl: Kubectl, namespace: str, run_name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        jobs = kubectl.json("get", "jobs", "-n", namespace, "-l", f"nofx.dev/run={run_name}")[
            "items"
        ]
        if not jobs:
            return
        time.sleep(0.2)
    raise AssertionError(f"Jobs of {run_name} were not deleted")


def test_cancel_mid_run(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    apply(
        kubectl,
        namespace,
        agent("sleepy", {"kwok.nofx.dev/duration": "1h"}),
        run(
            "cancel-me", steps=[step("work", "sleepy"), step("after", "sleepy", dependsOn=["work"])]
        ),
    )
    _wait_step_phase(kubectl, namespace, "cancel-me", "work", "Running")
    nofx("cancel", "cancel-me", "-n", namespace, "--kubeconfig", str(kubectl.kubeconfig))
    body = wait_for_phase(kubectl, namespace, "cancel-me", {"Cancelled"})
    steps = steps_by_name(body)
    assert steps["work"]["phase"] == "Cancelled" and steps["after"]["phase"] == "Skipped"
    _wait_no_jobs(kubectl, namespace, "cancel-me")
    assert "RunCancelled" in events_of(kubectl, namespace, "cancel-me")


def _wait_step_phase(
    kubectl: Kubectl, namespace: str, run_name: str, step_name: str, phase: str
) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = kubectl.json("get", "run", run_name, "-n", namespace)
        entry = steps_by_name(body).get(step_name) if body.get("status", {}).get("steps") else None
        if entry and entry["phase"] == phase:
            return body
        time.sleep(0.2)
    raise AssertionError(f"step {step_name} of {run_name} never reached {phase}")


def nofx(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "nofx.cli", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_approval_gate_waits_until_approved(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run(
            "release",
            steps=[
                step("build"),
                step("publish", dependsOn=["build"], approval={"message": "check the changelog"}),
            ],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "release", {"WaitingApproval"})
    assert "check the changelog" in steps_by_name(body)["publish"]["message"]
    time.sleep(1)
    assert not kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/step=publish")["items"]
    out = nofx(
        "approve",
        "release",
        "-n",
        namespace,
        "--step",
        "publish",
        "--kubeconfig",
        str(kubectl.kubeconfig),
    )
    assert "approved by nofx-admin" in out  # whoever the API server authenticated
    body = wait_for_phase(kubectl, namespace, "release", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded"


def test_when_skips_a_step_and_finally_runs_after_a_failure(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        agent("broken", {"kwok.nofx.dev/exit-code": "1"}),
        run(
            "guarded",
            parameters={"deploy": "no"},
            steps=[
                step("build", "broken"),
                step(
                    "deploy",
                    when=[{"input": "{{ params.deploy }}", "operator": "In", "values": ["yes"]}],
                ),
            ],
            **{"finally": [step("cleanup", inputs={"why": "always"})]},
        ),
    )
    body = wait_for_phase(kubectl, namespace, "guarded", {"Succeeded", "Failed"})
    steps = steps_by_name(body)
    assert steps["deploy"]["phase"] == "Skipped" and "when" in steps["deploy"]["message"]
    assert steps["build"]["phase"] == "Failed"
    assert steps["cleanup"]["phase"] == "Succeeded"
    assert steps["cleanup"]["startedAt"] >= steps["build"]["finishedAt"]
    assert body["status"]["phase"] == "Failed"


def test_for_each_fans_out_over_five_items_and_joins(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run(
            "swarm",
            parameters={"repos": ["a", "b", "c", "d", "e"]},
            steps=[
                step("review", forEach="{{ params.repos }}", inputs={"repo": "{{ item }}"}),
                step(
                    "join",
                    dependsOn=["review"],
                    inputs={"all": "{{ steps.review.outputs.repo }}"},
                ),
            ],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "swarm", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    steps = steps_by_name(body)
    assert [steps[f"review[{i}]"]["outputs"] for i in range(5)] == [{"repo": r} for r in "abcde"]
    joined = json.loads(steps["join"]["outputs"]["all"])
    assert joined == list("abcde")
    jobs = kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/step=review")["items"]
    assert len(jobs) == 5


def test_child_run_step_starts_a_run_and_waits_for_it(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        template(
            "child",
            [step("inner", inputs={"topic": "{{ params.topic }}"})],
            parameters=[{"name": "topic"}],
            outputs=[{"name": "topic", "value": "{{ steps.inner.outputs.topic }}"}],
        ),
        run(
            "parent",
            steps=[
                {
                    "name": "delegate",
                    "childRun": {"templateRef": {"name": "child"}, "parameters": {"topic": "docs"}},
                },
                step(
                    "after",
                    dependsOn=["delegate"],
                    inputs={"got": "{{ steps.delegate.outputs.topic }}"},
                ),
            ],
        ),
    )
    body = wait_for_phase(kubectl, namespace, "parent", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"]
    steps = steps_by_name(body)
    child_name = steps["delegate"]["childRunName"]
    child = kubectl.json("get", "run", child_name, "-n", namespace)
    assert child["status"]["phase"] == "Succeeded"
    assert child["metadata"]["ownerReferences"][0]["name"] == "parent"
    assert steps["after"]["outputs"] == {"got": "docs"}


def test_agent_concurrency_limit_across_runs(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("single", {"kwok.nofx.dev/duration": "1s"}, maxConcurrentSteps=1),
        *[run(f"queued-{i}", steps=[step("work", "single")]) for i in range(3)],
    )
    saw_waiting = False
    deadline = time.monotonic() + 60
    finished: list[dict] = []
    while time.monotonic() < deadline:
        jobs = kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/agent=single")["items"]
        active = [
            j
            for j in jobs
            if not any(c["status"] == "True" for c in j.get("status", {}).get("conditions", []))
        ]
        assert len(active) <= 1, f"{len(active)} Jobs of a maxConcurrentSteps=1 Agent at once"
        runs = kubectl.json("get", "runs", "-n", namespace)["items"]
        messages = [
            s.get("message", "") for r in runs for s in (r.get("status") or {}).get("steps", [])
        ]
        saw_waiting |= any("waiting for a free slot of Agent single" in m for m in messages)
        finished = [
            r for r in runs if (r.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        ]
        if len(finished) == 3:
            break
        time.sleep(0.1)
    assert [r["status"]["phase"] for r in finished] == ["Succeeded"] * 3
    assert saw_waiting, "no step ever said it waited for the agent's slot"


def test_ttl_deletes_finished_run_with_its_jobs(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run("short-lived", ttlSecondsAfterFinished=2, steps=[step("work")]),
    )
    wait_for_phase(kubectl, namespace, "short-lived", {"Succeeded"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if kubectl.run("get", "run", "short-lived", "-n", namespace, check=False).returncode != 0:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the Run outlived its ttlSecondsAfterFinished")
    _wait_no_jobs(kubectl, namespace, "short-lived")


def test_template_created_after_the_run(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, namespace, run("early", templateRef={"name": "later"}))
    body = wait_for_phase(kubectl, namespace, "early", {"Pending"})
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "TemplateMissing" and "later" in ready["message"]
    apply(kubectl, namespace, template("later", [step("work")]))
    # The Template's arrival wakes the Run: it now waits for the Template's Agent.
    wait_for_phase(kubectl, namespace, "early", {"Pending"}, message_has="Agent echo not found")
    apply(kubectl, namespace, agent("echo"))
    body = wait_for_phase(kubectl, namespace, "early", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded"
    template_status = kubectl.json("get", "template", "later", "-n", namespace)["status"]
    assert template_status["conditions"][0]["status"] == "True"


def test_invalid_plan_fails_with_a_clear_reason(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run("cyclic", steps=[step("a", dependsOn=["b"]), step("b", dependsOn=["a"])]),
    )
    body = wait_for_phase(kubectl, namespace, "cyclic", {"Failed"})
    assert "cycle" in body["status"]["message"] and "a" in body["status"]["message"]
    assert "RunFailed" in events_of(kubectl, namespace, "cyclic")


def test_metrics_are_served(operator: OperatorProcess) -> None:
    text = operator.metrics()
    for name in (
        "nofx_runs{phase=",
        "nofx_step_attempts_total",
        "nofx_reconcile_duration_seconds_bucket",
        "nofx_run_first_job_latency_seconds_bucket",
        "nofx_step_next_job_latency_seconds_bucket",
    ):
        assert name in text, name
    # The steps that succeeded in this module's tests were read from the operator's Pod watch.
    from_watch = re.search(r'^nofx_step_pod_reads_total\{source="watch"\} (\S+)$', text, re.M)
    assert from_watch and float(from_watch.group(1)) > 0, "no step Pod read from the watch"
