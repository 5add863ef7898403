"""A Schedule on the real control plane: an every-minute schedule starts an owned, labelled Run
that succeeds; a scheduled time that passes while the operator is down starts exactly one Run
when it is back, and restarting it again starts nothing twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from ..conftest import Kubectl
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, step, template

SCHEDULE = "every-minute"


def schedule(**spec: object) -> dict:
    return {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": SCHEDULE},
        "spec": {
            "schedule": "* * * * *",
            "runTemplate": {"templateRef": {"name": "one"}, "parameters": {"task": "tick"}},
            **spec,
        },
    }


def scheduled_runs(kubectl: Kubectl, namespace: str) -> dict[str, dict]:
    items = kubectl.json("get", "runs", "-n", namespace, "-l", f"nofx.dev/schedule={SCHEDULE}")
    return {run["metadata"]["name"]: run for run in items["items"]}


def wait_for_runs(kubectl: Kubectl, namespace: str, count: int, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = scheduled_runs(kubectl, namespace)
        if len(runs) >= count:
            return runs
        time.sleep(0.5)
    raise AssertionError(f"{count} scheduled Runs expected, found {sorted(runs)}")


def test_every_minute_schedule_starts_one_run_per_time_across_restarts(
    operator: OperatorProcess, kubectl: Kubectl, namespace: str
) -> None:
    apply(
        kubectl,
        namespace,
        agent("echo"),
        template(
            "one",
            [step("work", inputs={"task": "{{ params.task }}"})],
            parameters=[{"name": "task", "required": True}],
        ),
        schedule(successfulRunsHistoryLimit=5),
    )
    first = wait_for_runs(kubectl, namespace, 1, timeout=75)
    (name,) = first
    body = first[name]
    assert body["metadata"]["labels"]["nofx.dev/schedule"] == SCHEDULE
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("Schedule", SCHEDULE, True)
    assert "account" not in body["spec"]
    scheduled_at = datetime.fromisoformat(body["metadata"]["annotations"]["nofx.dev/scheduled-at"])
    assert name == f"{SCHEDULE}-{int(scheduled_at.timestamp()) // 60}"
    done = wait_for_phase(kubectl, namespace, name, {"Succeeded", "Failed"})
    assert done["status"]["phase"] == "Succeeded", done["status"]
    status = kubectl.json("get", "schedule", SCHEDULE, "-n", namespace)["status"]
    assert datetime.fromisoformat(status["lastScheduleTime"]) == scheduled_at
    assert datetime.fromisoformat(status["nextScheduleTime"]) > scheduled_at
    assert kubectl("get", "nxs", "-n", namespace).split()[:5] == [
        "NAME",
        "SCHEDULE",
        "SUSPEND",
        "LAST",
        "NEXT",
    ]

    # Down across the next scheduled time: once back, it starts that time's Run, once.
    operator.kill()
    now = datetime.now(UTC)
    time.sleep(60 - now.second + 2)
    operator.start()
    runs = wait_for_runs(kubectl, namespace, 2, timeout=30)
    uids = {run_name: run["metadata"]["uid"] for run_name, run in runs.items()}
    assert len(uids) == 2, sorted(uids)

    # Killed right after it started them: the restarted operator finds them and adds none.
    operator.kill()
    operator.start()
    time.sleep(3)
    again = {n: r["metadata"]["uid"] for n, r in scheduled_runs(kubectl, namespace).items()}
    # Only a scheduled time that passed meanwhile may add a Run, with a later name.
    assert {n: again[n] for n in uids} == uids
    assert all(n > max(uids) for n in set(again) - set(uids)), sorted(again)
    kubectl("patch", "schedule", SCHEDULE, "-n", namespace, "--type=merge", "-p",
            '{"spec": {"suspend": true}}')  # fmt: skip
