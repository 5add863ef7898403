"""budget.maxCost: once a Run's recorded cost passes it, nothing new starts, running steps are
stopped and the Run fails with reason BudgetExceeded; the currency is checked when it is pinned."""

from __future__ import annotations

from typing import Any

from nofx.api.reasons import Reason

from .builders import Sim, agent, by_ref, condition, entry, inline, phases, step, template

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
