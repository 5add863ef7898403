"""Template handler: keeps each Template's status true (Ready, or AgentMissing / InvalidPlan
with a message naming the problem; specHash; step count), records its versions in the mirror,
and wakes Runs that waited for it. The Template watch (specs.py) calls it for each change, one
at a time, on a thread of its own."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from nofx.api.reasons import Reason
from nofx.api.template import TemplateSpec
from nofx.kube import Kube
from nofx.mirror.registry import offer_registry_event
from nofx.planner import validation
from nofx.planner.pinning import agent_for
from nofx.reconcilers import status_patch
from nofx.reconcilers.context import OperatorContext


def template_changed(ctx: OperatorContext, kind: str, body: dict[str, Any]) -> None:
    raw_spec = dict(body.get("spec") or {})
    offer_registry_event(ctx.mirror, "Template", kind, body, validation.spec_hash(raw_spec))
    metadata = body["metadata"]
    if kind != "DELETED":
        update_status(ctx.kube, body, ctx.watched.agents.valid(metadata["namespace"]))
    waiting = ctx.runs.waiters.pop(metadata["namespace"], "Template", metadata["name"])
    ctx.runs.trigger_from_thread(waiting)


def update_status(kube: Kube, body: dict[str, Any], agents: dict[str, Any]) -> None:
    try:
        spec = TemplateSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        status_patch.apply(
            kube, "templates", body, ready=False, reason="InvalidSpec", message=str(error)[:1000]
        )
        return
    extra = {
        "specHash": validation.spec_hash(spec),
        "stepCount": len(spec.steps) + len(spec.finally_ or []),
    }
    problems = validation.validate_plan(spec)
    missing = [
        step.agent_ref.name
        if step.agent_ref
        else "with skills " + ",".join(step.agent_selector.skills if step.agent_selector else [])
        for step in [*spec.steps, *(spec.finally_ or [])]
        if not step.child_run and agent_for(step, agents) is None
    ]
    reason: str
    if problems:
        ready, reason, message = False, Reason.INVALID_PLAN, "; ".join(problems)
    elif missing:
        names = ", ".join(sorted(set(missing)))
        ready, reason, message = False, Reason.AGENT_MISSING, f"Agent not found: {names}"
    else:
        ready, reason, message = True, "Valid", "the template can run"
    status_patch.apply(
        kube, "templates", body, ready=ready, reason=reason, message=message, extra=extra
    )


def refresh_templates(kube: Kube, namespace: str, names: list[str], agents: dict[str, Any]) -> None:
    """Re-evaluates Templates of a namespace after its Agents changed."""
    for name in names:
        body = kube.get("templates", namespace, name)
        if body is not None:
            update_status(kube, body, agents)
