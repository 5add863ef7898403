"""Every Run ends with a true answer: what the API server refuses, a Job that cannot create its
Pod, outputs no reader can take, plans too large or that start themselves without end, child Run
trees, and a status someone else rewrote. Each test asserts what a user sees (phase, reason,
message, Events) within a bounded time, and the last one that the operator still serves Runs."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step, steps_by_name, template

CHILD = "childRun"


def child(name: str, template_name: str) -> dict:
    return {"name": name, CHILD: {"templateRef": {"name": template_name}}}


def events_of(kubectl: Kubectl, namespace: str, name: str) -> list[dict]:
    selector = f"involvedObject.name={name}"
    return kubectl.json("get", "events", "-n", namespace, "--field-selector", selector)["items"]


def reason_of(body: dict) -> str:
    [succeeded] = [c for c in body["status"]["conditions"] if c["type"] == "Succeeded"]
    return str(succeeded["reason"])


def runs_in(kubectl: Kubectl, namespace: str) -> list[dict]:
    return list(kubectl.json("get", "runs", "-n", namespace)["items"])


def wait_until(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s (last: {value})")


# --- refused by the API server, or by the cluster -------------------------------------------


@pytest.fixture
def jobs_refused(kubectl: Kubectl, namespace: str) -> Iterator[str]:
    """A platform policy that refuses every Job of the namespace (a ValidatingAdmissionPolicy,
    enforced by the API server itself)."""
    name = f"no-jobs-{namespace}"[:63]
    message = "Jobs are not allowed in this namespace"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["batch"],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["jobs"],
                    }
                ]
            },
            "validations": [{"expression": "false", "message": message}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                 "items": [policy, binding]}))  # fmt: skip
    probe = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "probe", "namespace": namespace},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "c", "image": "x"}]}}},
    }  # fmt: skip

    def refused() -> bool:
        result = kubectl.run(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
        )
        return message in result.stderr

    wait_until(refused, 30, "the policy taking effect")
    try:
        yield message
    finally:
        kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)


def test_a_job_the_api_server_refuses_fails_its_step_at_once_with_the_servers_words(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str, jobs_refused: str
) -> None:
    retries = {"limit": 3, "backoff": {"duration": "1s"}}
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run("refused", steps=[step("build", retries=retries), step("ship", dependsOn=["build"])]),
    )
    body = wait_for_phase(kubectl, namespace, "refused", {"Succeeded", "Failed"}, timeout=30)
    assert body["status"]["phase"] == "Failed"
    build = steps_by_name(body)["build"]
    assert build["reason"] == "JobRejected"
    assert build["attempts"] == 1, "a refusal is never retried"
    assert jobs_refused in build["message"]
    assert steps_by_name(body)["ship"]["phase"] == "Skipped"
    assert jobs_refused in body["status"]["message"]
    warnings = [e for e in events_of(kubectl, namespace, "refused") if e["type"] == "Warning"]
    assert any(jobs_refused in e["message"] for e in warnings)


def test_a_job_that_cannot_create_its_pod_says_why_then_fails_in_bounded_time(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("lost", serviceAccountName="nobody-made-me"),
        run("no-pod", steps=[step("work", "lost")]),
    )

    def says_why() -> str | None:
        body = kubectl.json("get", "run", "no-pod", "-n", namespace)
        message = steps_by_name(body)["work"].get("message", "") if body.get("status") else ""
        return message if "cannot create its Pod" in message else None

    message = wait_until(says_why, 20, "the step saying why its Pod is missing")
    assert "nobody-made-me" in message
    body = wait_for_phase(kubectl, namespace, "no-pod", {"Failed"}, timeout=45)
    work = steps_by_name(body)["work"]
    assert "nobody-made-me" in work["message"]
    jobs = kubectl.json("get", "jobs", "-n", namespace)["items"]
    assert jobs == [], "the Job that could not create its Pod is stopped"


def test_outputs_no_reader_could_take_fail_the_step_not_the_operator(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    deep = '{"a":' + "[" * 1500 + "]" * 1500 + "}"
    apply(
        kubectl,
        namespace,
        agent("deep", {"kwok.nofx.dev/message": deep}),
        run("deep-outputs", steps=[step("dig", "deep")]),
    )
    body = wait_for_phase(kubectl, namespace, "deep-outputs", {"Succeeded", "Failed"}, timeout=30)
    assert body["status"]["phase"] == "Failed"
    assert "nested more than 32 levels" in steps_by_name(body)["dig"]["message"]


def test_a_plan_too_large_for_a_status_is_an_invalid_plan_before_anything_runs(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    fans = [step(f"fan{i}", forEach='["a", "b"]') for i in range(11)]
    apply(kubectl, namespace, agent("echo"), run("too-wide", steps=fans))
    body = wait_for_phase(kubectl, namespace, "too-wide", {"Failed"}, timeout=30)
    assert reason_of(body) == "InvalidPlan"
    assert "status entries" in body["status"]["message"]
    assert kubectl.json("get", "jobs", "-n", namespace)["items"] == []


# --- trees of child Runs --------------------------------------------------------------------


def test_templates_that_start_each_other_are_an_invalid_plan(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        template("ping", [step("work"), child("to-pong", "pong")]),
        template("pong", [child("to-ping", "ping")]),
        run("loop", templateRef={"name": "ping"}),
    )
    body = wait_for_phase(kubectl, namespace, "loop", {"Failed"}, timeout=30)
    assert reason_of(body) == "InvalidPlan"
    assert "ping → pong → ping" in body["status"]["message"]
    assert [r["metadata"]["name"] for r in runs_in(kubectl, namespace)] == ["loop"]


def test_child_runs_nest_no_deeper_than_the_limit(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    levels = [template(f"level{i}", [child("down", f"level{i + 1}")]) for i in range(7)]
    apply(
        kubectl,
        namespace,
        agent("echo"),
        template("level7", [step("work")]),
        *levels,
        run("deep", templateRef={"name": "level0"}),
    )
    body = wait_for_phase(kubectl, namespace, "deep", {"Succeeded", "Failed"}, timeout=60)
    assert body["status"]["phase"] == "Failed"
    runs = runs_in(kubectl, namespace)
    labels = {r["metadata"]["name"]: r["metadata"].get("labels") or {} for r in runs}
    depths = sorted(int(label.get("nofx.dev/depth", "0")) for label in labels.values())
    assert depths == [0, 1, 2, 3, 4, 5], "the default limit: five levels below the root"
    [deepest] = [r for r in runs if labels[r["metadata"]["name"]].get("nofx.dev/depth") == "5"]
    down = steps_by_name(deepest)["down"]
    assert down["reason"] == "ChildRunLimit"
    assert "--max-child-run-depth" in down["message"]
    roots = {label.get("nofx.dev/root-run") for name, label in labels.items() if name != "deep"}
    assert roots == {body["metadata"]["uid"]}, "every child Run names the root of its tree"


def test_cancelling_a_root_run_reaches_every_descendant(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("slow", {"kwok.nofx.dev/duration": "120s"}),
        template("outer", [child("down", "middle")]),
        template("middle", [child("down", "inner")]),
        template("inner", [step("work", "slow")]),
        run("tree", templateRef={"name": "outer"}),
    )

    def all_running() -> bool:
        runs = runs_in(kubectl, namespace)
        jobs = kubectl.json("get", "jobs", "-n", namespace)["items"]
        phases = [(r.get("status") or {}).get("phase") for r in runs]
        return len(runs) == 3 and phases == ["Running"] * 3 and len(jobs) == 1

    wait_until(all_running, 30, "three nested Runs running")
    kubectl("patch", "run", "tree", "-n", namespace, "--type=merge", "-p",
            '{"spec": {"cancel": true}}')  # fmt: skip

    def all_cancelled() -> bool:
        phases = [(r.get("status") or {}).get("phase") for r in runs_in(kubectl, namespace)]
        jobs = kubectl.json("get", "jobs", "-n", namespace)["items"]
        active = [j for j in jobs if not j["metadata"].get("deletionTimestamp")]
        return phases == ["Cancelled"] * 3 and not active

    wait_until(all_cancelled, 30, "every Run of the tree cancelled, its Job gone")


# --- a status someone else wrote ------------------------------------------------------------


def test_a_forged_status_fails_the_run_instead_of_lying_or_hanging(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    slow = [step("work", "slow"), step("after", "slow", dependsOn=["work"])]
    apply(
        kubectl,
        namespace,
        agent("slow", {"kwok.nofx.dev/duration": "120s"}),
        run("forged-phase", steps=slow),
        run("forged-pin", steps=slow),
    )
    for name in ("forged-phase", "forged-pin"):
        wait_until(
            lambda n=name: (
                (kubectl.json("get", "run", n, "-n", namespace).get("status") or {}).get("progress")
                == "0/2"
                and len(kubectl.json("get", "jobs", "-n", namespace)["items"]) >= 1
            ),
            30,
            f"{name} running",
        )
    kubectl("patch", "run", "forged-phase", "-n", namespace, "--subresource=status",
            "--type=merge", "-p", '{"status": {"phase": "Succeeded"}}')  # fmt: skip
    kubectl("patch", "run", "forged-pin", "-n", namespace, "--subresource=status",
            "--type=json", "-p", '[{"op": "remove", "path": "/status/pinned"}]')  # fmt: skip
    for name, words in (("forged-phase", "status.phase is Succeeded"),
                        ("forged-pin", "status.pinned is gone")):  # fmt: skip
        body = wait_for_phase(kubectl, namespace, name, {"Failed"}, timeout=20)
        assert reason_of(body) == "InconsistentStatus"
        assert words in body["status"]["message"]
        assert steps_by_name(body)["work"]["phase"] == "Cancelled"
        assert steps_by_name(body)["after"]["phase"] == "Skipped"


# --- and through all of it ------------------------------------------------------------------


def test_the_operator_still_serves_other_runs(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    assert operator.process is not None and operator.process.poll() is None
    apply(
        kubectl,
        namespace,
        agent("echo"),
        run("fine", steps=[step("a"), step("b", dependsOn=["a"])]),
    )
    body = wait_for_phase(kubectl, namespace, "fine", {"Succeeded", "Failed"}, timeout=30)
    assert body["status"]["phase"] == "Succeeded"
    assert "nofx_reconcile_errors_total" in operator.metrics()
