"""Cached steps: a step with `cache` reuses the outputs of an earlier successful attempt with the
same cache key, instead of running a Job. Pure functions; the reconciler looks keys up in
Postgres off the reconcile path (reconcilers/step_cache.py) and hands the answers back through
World.cache_answers.

The key is the SHA-256 of the canonical JSON of what decides a result: the pinned Agent's spec
(by its hash) and image, the step's rendered inputs, the step's optional `cache.key`, and the
Run's namespace and account, so a hit never crosses namespaces or accounts. The step's name is
not part of it: two steps that run the same Agent on the same inputs do the same work.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from enum import StrEnum
from typing import Any

from nofx.api.common import parse_duration
from nofx.api.reasons import Reason
from nofx.api.run import StepStatus
from nofx.api.template import Step
from nofx.planner.facts import CacheQuery
from nofx.planner.pinning import agent_for
from nofx.planner.state import RunState

ASK_AGAIN = timedelta(seconds=30)
KEY_VERSION = 1  # changes when what goes into the key changes: older entries no longer match


class Lookup(StrEnum):
    HIT = "Hit"  # the step succeeded with the cached outputs
    WAIT = "Wait"  # the answer is not known yet
    MISS = "Miss"  # run the Job


def cache_key(
    *,
    namespace: str,
    account: str,
    agent_spec_hash: str,
    image: str,
    inputs: dict[str, Any],
    key: str | None,
) -> str:
    """The cache key of a step attempt (see the module's docstring)."""
    material = {
        "v": KEY_VERSION,
        "namespace": namespace,
        "account": account,
        "agent": agent_spec_hash,
        "image": image,
        "inputs": inputs,
        "key": key,
    }
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def key_of(state: RunState, step: Step, inputs: dict[str, Any]) -> str | None:
    """The cache key of the step with these rendered inputs; None if it asks for no cache."""
    if step.cache is None or step.for_each is not None or step.child_run is not None:
        return None  # the API server refuses cache on those; a Job step only
    agent_name = agent_for(step, state.agents)
    pinned = (state.status.pinned.agents or {}) if state.status.pinned else {}
    if agent_name is None or agent_name not in pinned:
        return None
    return cache_key(
        namespace=state.run.namespace,
        account=state.status.account or "",
        agent_spec_hash=pinned[agent_name].spec_hash,
        image=state.agents[agent_name].image,
        inputs=inputs,
        key=step.cache.key,
    )


def look_up(state: RunState, step: Step, entry: StepStatus, inputs: dict[str, Any]) -> Lookup:
    """Before the first attempt of a cached step: reuse a cached result (the step succeeds,
    with no Job and no cost), wait for the answer, or go on and run the Job."""
    key = key_of(state, step, inputs)
    if key is None or step.cache is None or entry.attempts:
        return Lookup.MISS  # retries of an attempt that ran are never answered from the cache
    if key not in state.world.cache_answers:
        since = state.now - parse_duration(step.cache.ttl)
        query = CacheQuery(key, state.run.namespace, state.status.account or "", since)
        state.decision.cache_queries.append(query)
        state.wait(entry, "looking up the step cache", Reason.CACHE_LOOKUP)
        # The answer triggers the Run; a look later asks again if it was lost (a restart).
        state.decision.wake_no_later_than(state.now + ASK_AGAIN)
        return Lookup.WAIT
    hit = state.world.cache_answers[key]
    if hit is None or hit.created_at < state.now - parse_duration(step.cache.ttl):
        return Lookup.MISS
    entry.outputs = hit.outputs
    entry.started_at = entry.started_at or state.now
    message = (
        f"cached: reused the outputs of Run {hit.namespace}/{hit.run_name} step {hit.step} "
        f"(succeeded {hit.created_at.isoformat()}, uid {hit.run_uid})"
    )
    state.end(entry, "Succeeded", message, Reason.CACHED)
    return Lookup.HIT
