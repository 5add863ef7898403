"""Metering: the wall time of a finished attempt (from its container's own start and finish),
priced by the Agent's pricing.perHour, added to the Run's usage and handed to the mirror."""

from __future__ import annotations

from decimal import Decimal

from nofx.api.run import StepStatus, Usage
from nofx.api.template import Step
from nofx.changes import AttemptFinished
from nofx.planner.facts import JobObservation
from nofx.planner.pinning import agent_for
from nofx.planner.state import RunState


def meter(
    state: RunState, step: Step, entry: StepStatus, observation: JobObservation, outcome: str
) -> None:
    agent_name = agent_for(step, state.agents) or ""
    agent = state.agents.get(agent_name)
    pricing = agent.pricing if agent else None
    requests = agent.resources.requests if agent and agent.resources else None
    started, finished = observation.started_at, observation.finished_at or state.now
    wall = max(0.0, (finished - started).total_seconds()) if started else 0.0
    per_hour = Decimal(pricing.per_hour) if pricing else Decimal(0)
    cost = (Decimal(str(wall)) * per_hour / 3600).quantize(Decimal("0.000000001"))
    currency = pricing.currency if pricing else "USD"
    usage = state.status.usage or Usage()
    usage.wall_seconds = round(usage.wall_seconds + wall, 3)
    usage.cost = str((Decimal(usage.cost) + cost).normalize())
    if "E" in usage.cost:  # normalize() writes 0E-9 for zero
        usage.cost = format(Decimal(usage.cost), "f")
    usage.currency = currency
    state.status.usage = usage
    state.decision.finished_attempts.append(
        AttemptFinished(
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
        )
    )


# --- forEach: one entry per item, then a join ---
