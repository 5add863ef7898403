"""A Run's budget (spec.budget, else its Template's): checked once when the Run is pinned (the
currency must be the one its priced Agents charge in), then after every pass that recorded cost.
Once the recorded cost passes maxCost, nothing new starts (attempts and child Runs ask
exceeded() first), running work is stopped and the Run fails with reason BudgetExceeded."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal

from nofx.api.agent import AgentSpec
from nofx.api.reasons import Reason
from nofx.api.run import RunStatus
from nofx.api.template import Budget
from nofx.api.usage import Usage
from nofx.planner import stopping
from nofx.planner.conditions import pending
from nofx.planner.facts import Decision, World
from nofx.planner.state import RunState

# How often a Run held back by its account's monthly budget looks again (a new month, a raised
# budget): the spend it reads is refreshed about as often (reconcilers/account_budgets.py).
ACCOUNT_BUDGET_RECHECK = timedelta(seconds=60)


def account_spent(status: RunStatus, world: World, decision: Decision) -> bool:
    """Holds a Run that has not started Pending while its account has spent its monthly budget
    (returns True then); it starts by itself once the budget allows."""
    budget = world.account_budget
    if budget is None or budget.account != status.account or not budget.exceeded:
        return False
    message = (
        f"account {budget.account} spent {budget.spent} {budget.currency} this month, its "
        f"monthly budget is {budget.max_cost} {budget.currency} (ConfigMap {budget.source}): "
        "the Run starts when the budget allows"
    )
    pending(status, world.now, Reason.ACCOUNT_BUDGET_EXCEEDED, message)
    decision.wake_no_later_than(world.now + ACCOUNT_BUDGET_RECHECK)
    return True


def currency_problems(budget: Budget | None, agents: Mapping[str, AgentSpec]) -> list[str]:
    """Why a budget cannot be held against what these Agents charge: costs in two currencies
    are never compared or added."""
    if budget is None:
        return []
    charged = {name: agent.pricing.currency for name, agent in agents.items() if agent.pricing}
    if budget.currency is not None:
        others = sorted(f"{name} ({c})" for name, c in charged.items() if c != budget.currency)
        if others:
            return [
                f"budget.currency is {budget.currency}, but Agent {', '.join(others)} charges "
                "in another currency: a budget holds costs in one currency"
            ]
        return []
    currencies = sorted(set(charged.values()))
    if len(currencies) > 1:
        listed = ", ".join(f"{name} ({c})" for name, c in sorted(charged.items()))
        return [
            f"the Agents charge in {len(currencies)} currencies ({listed}): set "
            "budget.currency, and use Agents that charge in it"
        ]
    return []


def spent(budget: Budget, usage: Usage | None) -> Decimal:
    """The recorded cost in the budget's currency (pinning made it the only one charged)."""
    if usage is None:
        return Decimal(0)
    costs = {entry.currency: Decimal(entry.cost) for entry in usage.costs or []}
    if budget.currency is not None:
        return costs.get(budget.currency, Decimal(0))
    return sum(costs.values(), Decimal(0))  # one currency at most, checked when pinned


def exceeded(state: RunState) -> bool:
    """Whether the cost recorded so far (this pass included) passed the budget: then no
    attempt or child Run starts."""
    budget = state.plan.budget
    return budget is not None and spent(budget, state.status.usage) > Decimal(budget.max_cost)


def enforce(state: RunState) -> bool:
    """Stops the Run if its recorded cost passed its budget; returns whether it did."""
    budget = state.plan.budget
    if budget is None or not exceeded(state):
        return False
    usage = state.status.usage
    currency = budget.currency or (usage.currency if usage else "")
    message = (
        f"the Run's recorded cost {spent(budget, usage)} {currency} passed its budget.maxCost "
        f"{budget.max_cost}: nothing new starts and running steps were stopped"
    )
    stopping.stop_everything(state, "Failed", Reason.BUDGET_EXCEEDED, message)
    return True
