"""Agent reconciler: keeps each Agent's status true (Ready, specHash, observedGeneration), keeps
an in-memory index of Agent specs per namespace, and wakes what waited for an Agent."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
from pydantic import ValidationError

from nofx.api.agent import AgentSpec
from nofx.api.common import GROUP, VERSION
from nofx.mirror.registry import offer_registry_event
from nofx.planner import validation
from nofx.reconcilers import context, status_patch
from nofx.reconcilers.templates import refresh_templates


@kopf.index(GROUP, VERSION, "agents")
async def agents_by_namespace(namespace: Any, name: Any, spec: kopf.Spec, **_: Any) -> Any:
    try:
        return {namespace: (name, AgentSpec.model_validate(dict(spec)))}
    except ValidationError:
        return {}  # agent_event reports it; {} rather than None drops a stale entry


@kopf.on.event(GROUP, VERSION, "agents")
async def agent_event(
    event: kopf.RawEvent, body: kopf.Body, namespace: Any, name: Any, memo: kopf.Memo, **_: Any
) -> None:
    ctx = context.of(memo)
    raw_spec = dict(body.get("spec") or {})
    offer_registry_event(
        ctx.mirror, "Agent", event["type"], dict(body), validation.spec_hash(raw_spec)
    )
    if event["type"] != "DELETED":
        await asyncio.to_thread(_update_status, ctx.kube, dict(body))
    # A new or changed Agent may be what a Run or a Template was missing.
    ctx.runs.trigger_soon(ctx.runs.waiters.pop_kind(namespace, "Agent"))
    agents = dict(ctx.indexes["agents_by_namespace"].get(namespace, []))
    templates = [name for name, _ in ctx.indexes["templates_by_namespace"].get(namespace, [])]
    await asyncio.to_thread(refresh_templates, ctx.kube, namespace, templates, agents)


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
