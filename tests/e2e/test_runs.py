"""Runs reconciled into Jobs by the real operator on the real control plane."""

from __future__ import annotations

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
