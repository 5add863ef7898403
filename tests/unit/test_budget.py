"""budget.maxCost: once a Run's recorded cost passes it, nothing new starts, running steps are
stopped and the Run fails with reason BudgetExceeded; the currency is checked when it is pinned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from nofx.api.account_budgets import AccountBudget, MonthlyBudget, parse
from nofx.api.reasons import Reason
from nofx.planner.budget import ACCOUNT_BUDGET_RECHECK
from nofx.reconcilers.account_budgets import combine, month_start

from .builders import T0, Sim, agent, by_ref, condition, entry, inline, phases, step, template

MINI = {"model": "mini", "inputPerMillion": "1", "outputPerMillion": "2"}


def priced(currency: str = "USD") -> Any:
    return agent(pricing={"currency": currency, "perHour": "36", "models": [MINI]})


AGENTS = {"coder": priced(), "reviewer": priced()}


def tokens(output_tokens: int) -> dict[str, Any]:
    return {"nofx.usage": {"model": "mini", "outputTokens": output_tokens}}


def test_cost_past_the_budget_stops_running_steps_and_starts_nothing_new() -> None:
    plan = inline(step("a"), step("slow"), step("b", "a"), budget={"maxCost": "1.5"},
                  **{"finally": [step("cleanup")]})  # fmt: skip
    sim = Sim(plan, agents=AGENTS)
    sim.decide()
    slow_job = entry(sim.status, "slow").job_name
    sim.tick(100)  # 100 s at 36 per hour: 1
    sim.succeed("a", outputs=tokens(250_000))  # 0.5: 1.5 in all, not past the budget
    sim.decide()
    assert phases(sim.status)["b"] == "Running"
    sim.succeed("b", outputs=tokens(1))  # at once: 0.000002 more, just past it
    decision = sim.decide()
    assert phases(sim.status) == {"a": "Succeeded", "slow": "Cancelled", "b": "Succeeded",
                                  "cleanup": "Skipped"}  # fmt: skip
    assert decision.delete_jobs == [slow_job]
    assert decision.create_jobs == []
    assert sim.status.phase == "Failed"
    status, reason, message = condition(sim.status, "Succeeded")
    assert (status, reason) == ("False", Reason.BUDGET_EXCEEDED)
    assert message.startswith("the Run's recorded cost 1.500002 USD passed its budget.maxCost 1.5")


def test_a_job_asked_for_in_the_pass_that_passed_the_budget_is_never_created() -> None:
    sim = Sim(inline(step("a"), step("b", "a"), budget={"maxCost": "0.1"}), agents=AGENTS)
    sim.decide()
    sim.tick(20)  # 0.2
    sim.succeed("a")
    decision = sim.decide()
    assert (decision.create_jobs, decision.delete_jobs) == ([], [])
    assert phases(sim.status) == {"a": "Succeeded", "b": "Skipped"}
    assert sim.status.phase == "Failed"


def test_the_template_budget_is_the_default_and_the_runs_overrides_it() -> None:
    plan = template(step("a"), step("b", "a"), budget={"maxCost": "0.1"})
    sim = Sim(by_ref(), template=plan, agents=AGENTS)
    sim.decide()
    sim.tick(20)
    sim.succeed("a")
    sim.decide()
    assert condition(sim.status, "Succeeded")[1] == Reason.BUDGET_EXCEEDED

    sim = Sim(by_ref(budget={"maxCost": "10"}), template=plan, agents=AGENTS)
    sim.decide()
    sim.tick(20)
    sim.succeed("a")
    sim.decide()
    sim.succeed("b")
    sim.decide()
    assert sim.status.phase == "Succeeded"
    assert sim.status.usage is not None and sim.status.usage.cost == "0.2"


def test_a_budget_in_one_currency_with_agents_charging_in_another_does_not_start() -> None:
    agents = {"coder": priced("USD"), "reviewer": priced("EUR")}
    mixed = inline(step("a"), step("b", agent="reviewer"), budget={"maxCost": "1"})
    sim = Sim(mixed, agents=agents)
    assert sim.decide().create_jobs == []
    assert sim.status.phase == "Failed"
    _, reason, message = condition(sim.status, "Succeeded")
    assert reason == Reason.INVALID_PLAN
    assert "the Agents charge in 2 currencies (coder (USD), reviewer (EUR)): set budget" in message

    sim = Sim(inline(step("a"), budget={"maxCost": "1", "currency": "EUR"}), agents=agents)
    sim.decide()
    assert "budget.currency is EUR, but Agent coder (USD) charges" in (sim.status.message or "")

    # Costs in other currencies never count against it: the EUR budget holds EUR only.
    sim = Sim(inline(step("b", agent="reviewer"), budget={"maxCost": "1", "currency": "EUR"}),
              agents=agents)  # fmt: skip
    sim.decide()
    assert sim.status.phase == "Running"


def test_without_a_budget_any_cost_goes() -> None:
    sim = Sim(inline(step("a")), agents=AGENTS)
    sim.decide()
    sim.tick(3600)
    sim.succeed("a", outputs=tokens(10**12))
    sim.decide()
    assert sim.status.phase == "Succeeded"
    assert sim.status.usage is not None and sim.status.usage.cost == "2000036"


def test_a_child_run_does_not_start_past_the_budget() -> None:
    child = step("child", "a", childRun={"templateRef": {"name": "sub"}})
    sim = Sim(inline(step("a"), child, budget={"maxCost": "0.1"}), agents=AGENTS)
    sim.decide()
    sim.tick(20)
    sim.succeed("a")
    decision = sim.decide()
    assert (decision.create_child_runs, decision.cancel_child_runs) == ([], [])
    assert phases(sim.status) == {"a": "Succeeded", "child": "Skipped"}


# --- an account's monthly budget ------------------------------------------------------------


def monthly(spent: str, max_cost: str = "100", account: str = "team-a") -> AccountBudget:
    return AccountBudget(account, Decimal(max_cost), "USD", Decimal(spent), "nofx/budget-a")


def test_a_new_run_of_an_account_past_its_monthly_budget_waits_pending() -> None:
    sim = Sim(inline(step("a")), agents=AGENTS)
    sim.set_world(account_budget=monthly("100"))
    decision = sim.decide()
    assert decision.create_jobs == []
    assert sim.status.phase == "Pending"
    _, reason, message = condition(sim.status, "Ready")
    assert reason == Reason.ACCOUNT_BUDGET_EXCEEDED
    assert message.startswith(
        "account team-a spent 100 USD this month, its monthly budget is 100 USD "
        "(ConfigMap nofx/budget-a)"
    )
    assert decision.wake_at == sim.now + ACCOUNT_BUDGET_RECHECK
    # A raised budget (or a new month) lets it start by itself.
    sim.tick(60)
    sim.set_world(account_budget=monthly("100", max_cost="150"))
    assert [r.step for r in sim.decide().create_jobs] == ["a"]
    assert sim.status.phase == "Running"
    # Once started, the monthly budget no longer holds it.
    sim.set_world(account_budget=monthly("500"))
    sim.succeed("a")
    sim.decide()
    assert sim.status.phase == "Succeeded"


def test_another_accounts_budget_holds_nothing_and_a_held_run_can_be_cancelled() -> None:
    sim = Sim(inline(step("a")), agents=AGENTS)
    sim.set_world(account_budget=monthly("100", account="team-b"))
    assert sim.decide().create_jobs != []

    held = Sim(inline(step("a")), agents=AGENTS)
    held.set_world(account_budget=monthly("100"))
    held.decide()
    held.edit(cancel=True)
    held.decide()
    assert held.status.phase == "Cancelled"


def test_account_budget_configmaps_are_parsed_and_the_smaller_of_two_holds() -> None:
    good = parse("b", {"account": "acme", "monthlyMaxCost": "500.00", "currency": "EUR"})
    assert isinstance(good, MonthlyBudget)
    smaller = parse("a", {"account": "acme", "monthlyMaxCost": "200"})  # USD by default
    assert isinstance(smaller, MonthlyBudget)
    bad = parse("c", {"account": "acme", "monthlyMaxCost": "-1", "extra": "x"})
    assert isinstance(bad, str)
    assert bad.startswith("ConfigMap c is not an account budget: monthlyMaxCost: String should")
    assert "extra: Extra inputs are not permitted" in bad
    spent = {("acme", "USD"): Decimal("150"), ("acme", "EUR"): Decimal("600")}
    [(account, budget)] = combine([("ns/b", good), ("ns/a", smaller)], spent).items()
    assert account == "acme"
    assert (budget.max_cost, budget.currency, budget.spent, budget.exceeded) == (
        Decimal(200), "USD", Decimal(150), False,
    )  # fmt: skip
    [euro] = combine([("ns/b", good)], spent).values()
    assert (euro.spent, euro.exceeded) == (Decimal(600), True)
    assert month_start(T0 + timedelta(days=40, hours=3)) == datetime(2030, 2, 1, tzinfo=UTC)
