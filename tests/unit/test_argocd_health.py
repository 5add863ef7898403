"""The Argo CD health checks in manifests/argocd/health/, run in Lua 5.1 (lupa) the way Argo CD
runs them, and the argocd-cm snippet that installs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parents[2]
HEALTH = ROOT / "manifests" / "argocd" / "health"
CONFIGMAP = ROOT / "manifests" / "argocd" / "argocd-cm-health.yaml"
KINDS = ("Run", "Agent", "Template", "Schedule")

# Argo CD's gopher-lua opens only base, table, package and a safe os library; removing the rest
# (and the string methods reachable through ("").x) makes a script that relies on them fail here
# as it would in Argo CD.
SANDBOX = """
string, math, io, debug, coroutine, require, load, loadstring, dofile, loadfile = nil
getmetatable("").__index = nil
"""


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health check of `kind` against `obj`; return Argo CD's (status, message)."""
    lua = lua51.LuaRuntime()
    lua.execute(SANDBOX)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((HEALTH / f"{kind.lower()}.lua").read_text())
    assert set(hs.keys()) <= {"status", "message"}
    return hs["status"], hs["message"]


def run(phase: str | None = None, suspend: bool = False, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Run",
        "metadata": {"name": "r", "namespace": "default", "generation": 1},
        "spec": {"templateRef": {"name": "t"}, "suspend": suspend},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, **status}
    return obj


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (run(), ("Progressing", "waiting for the operator")),
        (
            {"apiVersion": "nofx.dev/v1alpha1", "kind": "Run"},
            ("Progressing", "waiting for the operator"),
        ),
        (
            run("Pending", message="waiting for Template t"),
            ("Progressing", "waiting for Template t"),
        ),
        (
            run(
                "Pending",
                message="account acme spent 500 USD this month",
                conditions=[
                    {"type": "Succeeded", "status": "Unknown", "reason": "AccountBudgetExceeded"},
                    {"type": "Ready", "status": "False", "reason": "AccountBudgetExceeded"},
                ],
            ),
            ("Suspended", "account acme spent 500 USD this month"),
        ),
        (
            run("Running", progress="2/5", message="the Run is running"),
            ("Progressing", "2/5 steps: the Run is running"),
        ),
        (
            run("Running", suspend=True, progress="2/5", message="the Run is suspended"),
            ("Suspended", "2/5 steps: the Run is suspended"),
        ),
        (
            run("Queued", progress="1/3", message="step b: attempt 1 queued in LocalQueue q: no"),
            ("Progressing", "1/3 steps: step b: attempt 1 queued in LocalQueue q: no"),
        ),
        (
            run("WaitingApproval", progress="3/5", message="step release waits for approval"),
            ("Suspended", "3/5 steps: step release waits for approval"),
        ),
        (
            run("Succeeded", progress="5/5", message="all steps succeeded"),
            ("Healthy", "5/5 steps: all steps succeeded"),
        ),
        (
            run("Failed", progress="3/5", message="build: exit code 1"),
            ("Degraded", "3/5 steps: build: exit code 1"),
        ),
        (
            run("Cancelled", progress="1/5", message="cancelled by spec.cancel"),
            ("Degraded", "1/5 steps: cancelled by spec.cancel"),
        ),
        # Fields the operator may not have written yet.
        (run("Running"), ("Progressing", "the Run is Running")),
        (run("Succeeded", progress=""), ("Healthy", "the Run is Succeeded")),
        (run("Paused", message="m"), ("Unknown", "unknown phase Paused: m")),
    ],
    ids=[
        "no-status",
        "bare-object",
        "pending",
        "pending-account-budget",
        "running",
        "running-suspended",
        "queued",
        "waiting-approval",
        "succeeded",
        "failed",
        "cancelled",
        "no-message-no-progress",
        "empty-progress",
        "unknown-phase",
    ],
)
def test_run_health(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert health("Run", obj) == expected


def test_suspend_does_not_hide_a_finished_run() -> None:
    assert health("Run", run("Failed", suspend=True, message="m")) == ("Degraded", "m")
    assert health("Run", run("Pending", suspend=True, message="m")) == ("Progressing", "m")


def registry(kind: str, generation: int = 2, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "default", "generation": generation},
        "spec": {},
    }
    if status:
        obj["status"] = status
    return obj


def ready(value: str, reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    condition = {"type": "Ready", "status": value, "reason": reason, "message": message}
    return {key: item for key, item in condition.items() if item is not None}


@pytest.mark.parametrize("kind", ["Agent", "Template"])
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {
                "observedGeneration": 2,
                "conditions": [ready("True", "Valid", "the agent can run steps")],
            },
            ("Healthy", "Valid: the agent can run steps"),
        ),
        (
            {
                "observedGeneration": 2,
                "conditions": [ready("False", "AgentMissing", "step build: Agent coder not found")],
            },
            ("Degraded", "AgentMissing: step build: Agent coder not found"),
        ),
        ({}, ("Progressing", "waiting for the operator")),
        (
            {
                "observedGeneration": 1,
                "conditions": [ready("True", "Valid", "ready")],
            },
            ("Progressing", "waiting for the operator to check the latest spec"),
        ),
        (
            {"conditions": [ready("True", "Valid", "ready")]},
            ("Progressing", "waiting for the operator to check the latest spec"),
        ),
        ({"observedGeneration": 2}, ("Progressing", "waiting for the operator")),
        (
            {"observedGeneration": 2, "conditions": [ready("Unknown", "Checking")]},
            ("Progressing", "Checking"),
        ),
        (
            {"observedGeneration": 2, "conditions": [ready("False", message="bad image")]},
            ("Degraded", "bad image"),
        ),
    ],
    ids=[
        "ready",
        "agent-missing",
        "no-status",
        "stale-generation",
        "no-observed-generation",
        "no-conditions",
        "ready-unknown",
        "no-reason",
    ],
)
def test_agent_and_template_health(
    kind: str, status: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert health(kind, registry(kind, **status)) == expected


@pytest.mark.parametrize("kind", ["Agent", "Template"])
def test_agent_and_template_fallback_messages(kind: str) -> None:
    noun = f"the {kind} is"
    ok = registry(kind, observedGeneration=2, conditions=[ready("True")])
    bad = registry(kind, observedGeneration=2, conditions=[ready("False")])
    assert health(kind, ok) == ("Healthy", f"{noun} ready")
    assert health(kind, bad) == ("Degraded", f"{noun} not ready")


@pytest.mark.parametrize("kind", ["Agent", "Template"])
def test_agent_and_template_without_metadata(kind: str) -> None:
    obj = {"kind": kind, "status": {"conditions": [ready("True", "Valid", "ok")]}}
    assert health(kind, obj) == ("Healthy", "Valid: ok")


def test_the_sandbox_rejects_the_string_library() -> None:
    """The checks above would hide a script that needs the string library; this proves not."""
    lua = lua51.LuaRuntime()
    lua.execute(SANDBOX)
    with pytest.raises(lua51.LuaError):
        lua.execute('return ("abc"):upper()')
    with pytest.raises(lua51.LuaError):
        lua.execute('return string.format("%d", 1)')


def test_argocd_cm_inlines_the_lua_files() -> None:
    data = yaml.safe_load(CONFIGMAP.read_text())["data"]
    assert set(data) == {f"resource.customizations.health.nofx.dev_{kind}" for kind in KINDS}
    for kind in KINDS:
        source = HEALTH / f"{kind.lower()}.lua"
        assert data[f"resource.customizations.health.nofx.dev_{kind}"] == source.read_text(), (
            f"{CONFIGMAP.relative_to(ROOT)} is out of date: copy {source.relative_to(ROOT)} into "
            f"its key resource.customizations.health.nofx.dev_{kind} (indented by 4 spaces)"
        )


def schedule(*conditions: dict[str, Any], suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nofx.dev/v1alpha1",
        "kind": "Schedule",
        "metadata": {"name": "nightly", "generation": 1},
        "spec": {"schedule": "0 3 * * *", "suspend": suspend},
        "status": {"observedGeneration": 1, "conditions": list(conditions), **status},
    }


def condition(kind: str, value: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": value, "reason": reason, "message": message}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (
            schedule(
                condition("Ready", "True", "Scheduled", "ok"),
                nextScheduleTime="2026-01-06T03:00:00Z",
            ),
            ("Healthy", "next Run at 2026-01-06T03:00:00Z"),
        ),
        (schedule(suspend=True), ("Suspended", "suspended: no Run starts")),
        (
            schedule(
                condition("Ready", "True", "Scheduled", "ok"),
                condition("Missed", "True", "DeadlineExceeded", "more than 60s late"),
            ),
            ("Degraded", "more than 60s late"),
        ),
        (
            schedule(
                condition("Ready", "True", "Scheduled", "ok"),
                condition("Missed", "True", "ConcurrencyForbidden", "waits"),
            ),
            ("Healthy", "scheduled"),
        ),
        (
            schedule(condition("Ready", "False", "InvalidSpec", "bad cron")),
            ("Degraded", "bad cron"),
        ),
        ({"kind": "Schedule", "spec": {}}, ("Progressing", "waiting for the operator")),
    ],
)
def test_schedule_health(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert health("Schedule", obj) == expected
