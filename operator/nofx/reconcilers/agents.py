"""Agent handler: keeps each Agent's status true (Ready, specHash, observedGeneration), records
its versions in the mirror, and wakes what waited for an Agent. The Agent watch (specs.py) calls
it for each change, one at a time, on a thread of its own."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from nofx.api.agent import AgentSpec
from nofx.mirror.registry import offer_registry_event
from nofx.planner import validation
from nofx.reconcilers import status_patch
from nofx.reconcilers.context import OperatorContext
from nofx.reconcilers.templates import refresh_templates


def agent_changed(ctx: OperatorContext, kind: str, body: dict[str, Any]) -> None:
    namespace = body["metadata"]["namespace"]
    raw_spec = dict(body.get("spec") or {})
    offer_registry_event(ctx.mirror, "Agent", kind, body, validation.spec_hash(raw_spec))
    if kind != "DELETED":
        _update_status(ctx.kube, body)
    # A new or changed Agent may be what a Run or a Template was missing.
    ctx.runs.trigger_from_thread(ctx.runs.waiters.pop_kind(namespace, "Agent"))
    agents = ctx.watched.agents.valid(namespace)
    refresh_templates(ctx.kube, namespace, list(ctx.watched.templates.of(namespace)), agents)


def _update_status(kube: Any, body: dict[str, Any]) -> None:
    try:
        spec = AgentSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        status_patch.apply(
            kube, "agents", body, ready=False, reason="InvalidSpec", message=str(error)[:1000]
        )
        return
    status_patch.apply(
        kube,
        "agents",
        body,
        ready=True,
        reason="Valid",
        message="the agent can run steps",
        extra={"specHash": validation.spec_hash(spec)},
    )
