"""Metering: the wall time of a finished attempt (from its container's own start and finish),
priced by the Agent's pricing.perHour, and the tokens it reported, priced per model; added to
the Run's usage (per currency, never across currencies) and handed to the mirror."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from nofx.api.run import StepStatus
from nofx.api.template import Step
from nofx.api.usage import MAX_USAGE_MODELS, CurrencyCost, ModelTokens, Usage
from nofx.changes import AttemptFinished, TokensUsed
from nofx.planner.facts import JobObservation
from nofx.planner.pinning import agent_for
from nofx.planner.state import RunState
from nofx.planner.tokens import money, money_text

DEFAULT_CURRENCY = "USD"


def meter(
    state: RunState,
    step: Step,
    entry: StepStatus,
    observation: JobObservation,
    outcome: str,
    tokens: Sequence[TokensUsed] = (),
    cache_key: str | None = None,
    outputs: dict[str, Any] | None = None,
) -> None:
    """Meters a finished attempt; a cached step's successful one carries its cache key and
    outputs to the mirror, which stores them as a cache entry with its usage record."""
    agent_name = agent_for(step, state.agents) or ""
    agent = state.agents.get(agent_name)
    pricing = agent.pricing if agent else None
    requests = agent.resources.requests if agent and agent.resources else None
    started, finished = observation.started_at, observation.finished_at or state.now
    wall = max(0.0, (finished - started).total_seconds()) if started else 0.0
    per_hour = Decimal(pricing.per_hour) if pricing and pricing.per_hour else Decimal(0)
    cost = money(Decimal(str(wall)) * per_hour / 3600)
    currency = pricing.currency if pricing else DEFAULT_CURRENCY
    finished_attempt = AttemptFinished(
        step=step.name,
        index=entry.index,
        attempt=entry.attempts or 0,
        job_name=observation.name,
        agent=agent_name,
        outcome=outcome,
        wall_seconds=wall,
        cost=cost,
        currency=currency,
        started_at=started,
        finished_at=finished,
        cpu_request=requests.cpu if requests else None,
        memory_request=requests.memory if requests else None,
        tokens=tuple(tokens),
        cache_key=cache_key,
        outputs=outputs if cache_key else None,
        queue=observation.queue_name,
        queued_seconds=queued_seconds(observation),
    )
    usage = state.status.usage or Usage()
    state.status.usage = add_to_usage(usage, finished_attempt, priced=pricing is not None)
    state.decision.finished_attempts.append(finished_attempt)


def queued_seconds(job: JobObservation) -> float | None:
    """How long a queued Job waited for Kueue's admission (its latest, after an eviction, is
    what the Workload keeps; else its container's start); None for a Job no queue admits."""
    if not job.queue_name or job.created_at is None:
        return None
    admitted_at = (job.admission.admitted_at if job.admission else None) or job.started_at
    if admitted_at is None:
        return None
    return round(max(0.0, (admitted_at - job.created_at).total_seconds()), 3)


def add_to_usage(usage: Usage, attempt: AttemptFinished, priced: bool = True) -> Usage:
    """The Run's usage with one more attempt: wall seconds, cost per currency (the first
    currency charged stays in cost/currency), tokens and their cost per model and currency.
    An Agent without pricing charges in no currency: its attempts add time and tokens only."""
    usage = usage.model_copy(deep=True)
    usage.wall_seconds = round(usage.wall_seconds + attempt.wall_seconds, 3)
    costs = {entry.currency: Decimal(entry.cost) for entry in usage.costs or []}
    if not costs and Decimal(usage.cost) > 0:  # metered before costs were listed
        costs[usage.currency] = Decimal(usage.cost)
    if priced:
        costs[attempt.currency] = costs.get(attempt.currency, Decimal(0)) + (
            attempt.cost + attempt.token_cost
        )
    if costs:
        first = next(iter(costs))
        usage.costs = [CurrencyCost(currency=c, cost=money_text(v)) for c, v in costs.items()]
        usage.currency, usage.cost = first, money_text(costs[first])
    models = {(entry.model, entry.currency): entry for entry in usage.tokens or []}
    for used in attempt.tokens:
        key = (used.model, attempt.currency)
        if key not in models and len(models) >= MAX_USAGE_MODELS:
            continue  # status lists the first models; the usage records hold every one
        before = models.get(key) or ModelTokens(model=used.model, currency=attempt.currency)
        models[key] = ModelTokens(
            model=used.model,
            input_tokens=before.input_tokens + used.input_tokens,
            output_tokens=before.output_tokens + used.output_tokens,
            cached_tokens=before.cached_tokens + used.cached_tokens,
            cost=money_text(Decimal(before.cost) + used.cost),
            currency=attempt.currency,
        )
    usage.tokens = list(models.values()) or None
    return usage
