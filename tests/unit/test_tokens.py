"""Tokens and cost: reading `nofx.usage` from a step's outputs, the Decimal arithmetic of token
prices, the Run's usage per model and per currency, and bad reports as typed reasons."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from nofx import metrics
from nofx.api.pricing import ModelPrice, Pricing
from nofx.api.reasons import Reason
from nofx.changes import AttemptFinished, TokensUsed
from nofx.planner.tokens import (
    MAX_TOKENS,
    ModelUsage,
    UsageProblem,
    cost,
    money_text,
    price,
    take_usage,
)

from .builders import Sim, agent, entry, inline, step

SONNET = {"model": "sonnet", "inputPerMillion": "3", "outputPerMillion": "15",
          "cachedPerMillion": "0.3"}  # fmt: skip
MINI = {"model": "mini", "inputPerMillion": "0.15", "outputPerMillion": "0.6"}


def priced(currency: str = "USD", per_hour: str | None = "3.6", **fields: Any) -> Any:
    pricing: dict[str, Any] = {"currency": currency, "models": [SONNET, MINI]}
    if per_hour is not None:
        pricing["perHour"] = per_hour
    return agent(pricing=pricing, **fields)


# --- arithmetic -------------------------------------------------------------------------------


def test_cost_is_tokens_times_price_per_million_in_decimal() -> None:
    prices = ModelPrice.model_validate(SONNET)
    usage = ModelUsage("sonnet", input_tokens=1_000_000, output_tokens=500_000,
                       cached_tokens=2_000_000)  # fmt: skip
    assert cost(usage, prices) == Decimal("11.1")  # 3 + 7.5 + 0.6
    assert isinstance(cost(usage, prices), Decimal)
    # One token of a cheap model: 0.00000015, exact, not a float's 1.4999999e-07.
    assert cost(ModelUsage("mini", input_tokens=1), ModelPrice.model_validate(MINI)) == Decimal(
        "0.00000015"
    )


def test_cached_tokens_cost_the_input_price_unless_priced_apart() -> None:
    usage = ModelUsage("mini", cached_tokens=2_000_000)
    assert cost(usage, ModelPrice.model_validate(MINI)) == Decimal("0.3")
    cheaper = ModelPrice.model_validate(MINI | {"cachedPerMillion": "0.075"})
    assert cost(usage, cheaper) == Decimal("0.15")


def test_cost_rounds_to_nine_places_half_even_and_stays_exact_for_huge_counts() -> None:
    tiny = ModelPrice.model_validate({"model": "m", "inputPerMillion": "0.0025",
                                      "outputPerMillion": "0"})  # fmt: skip
    assert cost(ModelUsage("m", input_tokens=1), tiny) == Decimal("0.000000002")  # 2.5e-9 → even
    assert cost(ModelUsage("m", input_tokens=3), tiny) == Decimal("0.000000008")  # 7.5e-9 → even
    dear = ModelPrice.model_validate({"model": "m", "inputPerMillion": "999999.123456789",
                                      "outputPerMillion": "0"})  # fmt: skip
    # Exactly 123456680796.789739672002468 (a float keeps 123456680796.78973).
    assert cost(ModelUsage("m", input_tokens=123_456_789_012), dear) == Decimal(
        "123456680796.789739672"
    )


def test_money_text_has_no_exponent_nor_trailing_zeros() -> None:
    assert money_text(Decimal("0E-9")) == "0"
    assert money_text(Decimal("0.450000000")) == "0.45"
    assert money_text(Decimal("12")) == "12"
    assert money_text(Decimal("1E+2")) == "100"


# --- reading nofx.usage -------------------------------------------------------------------------


def test_one_model_as_an_object_several_as_a_list_a_model_twice_added_up() -> None:
    outputs, usage = take_usage(
        {"pr": "url", "nofx.usage": {"model": "sonnet", "inputTokens": 10, "outputTokens": 2}}
    )
    assert outputs == {"pr": "url"}
    assert usage == [ModelUsage("sonnet", 10, 2, 0)]
    _, usage = take_usage(
        {
            "nofx.usage": [
                {"model": "sonnet", "inputTokens": 10, "cachedTokens": 5},
                {"model": "mini", "outputTokens": 7},
                {"model": "sonnet", "inputTokens": 1, "outputTokens": 1},
            ]
        }
    )
    assert usage == [ModelUsage("sonnet", 11, 1, 5), ModelUsage("mini", 0, 7, 0)]
    assert take_usage({"a": 1}) == ({"a": 1}, [])


@pytest.mark.parametrize(
    ("reported", "says"),
    [
        ({"model": "m", "inputTokens": -1}, "nofx.usage.inputTokens: must not be negative, got -1"),
        ({"model": "m", "outputTokens": "12"}, "outputTokens: must be a whole number, got string"),
        ({"model": "m", "outputTokens": 1.5}, "must be a whole number, got number 1.5"),
        ({"model": "m", "cachedTokens": True}, "must be a whole number, got boolean"),
        ({"inputTokens": 1}, "nofx.usage.model: must be a model name"),
        ({"model": " ", "inputTokens": 1}, "model: must be a model name"),
        ({"model": "m", "tokens": 1}, "unknown key 'tokens'"),
        ([{"model": "m"}, 3], "nofx.usage[1]: must be an object, got number"),
        ("many", "must be an object or a list of objects, got string"),
        ({"model": "m", "inputTokens": MAX_TOKENS + 1}, "more than"),
        ([{"model": "m", "inputTokens": MAX_TOKENS}] * 2, "more than"),
        ([{"model": f"m{i}"} for i in range(33)], "33 models; at most 32"),
    ],
)
def test_a_bad_report_is_a_typed_problem_naming_the_value(reported: Any, says: str) -> None:
    with pytest.raises(UsageProblem) as problem:
        take_usage({"nofx.usage": reported})
    assert problem.value.reason == Reason.INVALID_USAGE
    assert says in problem.value.message


def test_a_model_the_agent_does_not_price_is_refused_unless_it_prices_no_model() -> None:
    pricing = Pricing.model_validate({"perHour": "1", "models": [MINI]})
    with pytest.raises(UsageProblem) as problem:
        price([ModelUsage("sonnet", 1)], pricing, "coder")
    assert problem.value.reason == Reason.UNPRICED_MODEL
    assert "model sonnet, which Agent coder has no price for" in problem.value.message
    [used] = price([ModelUsage("sonnet", 1)], Pricing.model_validate({"perHour": "1"}), "coder")
    assert used.cost == Decimal(0)
    assert price([ModelUsage("sonnet", 5)], None, "coder")[0].input_tokens == 5


def test_pricing_needs_a_price_and_decimal_strings() -> None:
    with pytest.raises(ValidationError, match="set perHour, models or both"):
        Pricing.model_validate({"currency": "EUR"})
    with pytest.raises(ValidationError):
        Pricing.model_validate({"models": [MINI | {"inputPerMillion": "-1"}]})
    with pytest.raises(ValidationError):
        Pricing.model_validate({"models": [MINI | {"outputPerMillion": 0.6}]})
    assert Pricing.model_validate({"models": [MINI]}).per_hour is None


# --- the Run's usage -------------------------------------------------------------------------


def test_reported_tokens_add_to_the_runs_usage_and_leave_the_outputs() -> None:
    sim = Sim(inline(step("a"), step("b", "a")), agents={"coder": priced()})
    sim.decide()
    sim.tick(100)  # 100 s at 3.6 per hour: 0.1
    sim.succeed("a", outputs={"x": 1, "nofx.usage": [
        {"model": "sonnet", "inputTokens": 1000, "outputTokens": 200, "cachedTokens": 10000},
        {"model": "mini", "inputTokens": 4000},
    ]})  # fmt: skip
    decision = sim.decide()
    assert entry(sim.status, "a").outputs == {"x": 1}
    [attempt] = decision.finished_attempts
    assert attempt.cost == Decimal("0.1")
    assert [(t.model, t.cost) for t in attempt.tokens] == [
        ("sonnet", Decimal("0.009")),  # 0.003 + 0.003 + 0.003
        ("mini", Decimal("0.0006")),
    ]
    usage = sim.status.usage
    assert usage is not None
    assert (usage.cost, usage.currency) == ("0.1096", "USD")
    assert [(c.currency, c.cost) for c in usage.costs or []] == [("USD", "0.1096")]
    sim.tick(10)
    sim.succeed("b", outputs={"nofx.usage": {"model": "sonnet", "outputTokens": 1000}})
    sim.decide()
    usage = sim.status.usage
    assert [(t.model, t.input_tokens, t.output_tokens, t.cached_tokens, t.cost)
            for t in usage.tokens or []] == [
        ("sonnet", 1000, 1200, 10000, "0.024"),
        ("mini", 4000, 0, 0, "0.0006"),
    ]  # fmt: skip
    assert usage.cost == "0.1346"  # 0.1 + 0.0096 + 0.01 + 0.015
    assert sim.status.phase == "Succeeded"
    assert sim.decide().finished_attempts == []  # nothing metered twice


def test_a_run_mixing_currencies_reports_each_and_never_adds_them() -> None:
    agents = {"coder": priced("USD"), "reviewer": priced("EUR", per_hour="7.2")}
    sim = Sim(inline(step("a"), step("b", agent="reviewer")), agents=agents)
    sim.decide()
    sim.tick(100)
    sim.succeed("a", outputs={"nofx.usage": {"model": "mini", "outputTokens": 1_000_000}})
    sim.succeed("b", outputs={"nofx.usage": {"model": "mini", "outputTokens": 1_000_000}})
    sim.decide()
    usage = sim.status.usage
    assert usage is not None
    assert [(c.currency, c.cost) for c in usage.costs or []] == [("USD", "0.7"), ("EUR", "0.8")]
    assert (usage.cost, usage.currency) == ("0.7", "USD")  # the first currency, not 1.5
    assert [(t.model, t.currency, t.cost) for t in usage.tokens or []] == [
        ("mini", "USD", "0.6"),
        ("mini", "EUR", "0.6"),
    ]


def test_a_bad_report_fails_the_attempt_with_its_reason_and_is_retried() -> None:
    retried = step("a", retries={"limit": 1, "backoff": {"duration": "1s"}})
    sim = Sim(inline(retried), agents={"coder": priced()})
    sim.decide()
    sim.tick(36)
    sim.succeed("a", outputs={"nofx.usage": {"model": "mini", "inputTokens": -5}})
    decision = sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason) == ("Waiting", Reason.RETRY_BACKOFF)
    assert "nofx.usage.inputTokens: must not be negative" in (a.message or "")
    [attempt] = decision.finished_attempts
    assert (attempt.outcome, attempt.tokens, attempt.cost) == ("Failed", (), Decimal("0.036"))
    sim.tick(1)
    sim.decide()
    sim.succeed("a", outputs={"nofx.usage": "lots"})
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason) == ("Failed", Reason.INVALID_USAGE)
    assert sim.status.phase == "Failed"


def test_an_unpriced_model_fails_the_step_without_a_retry() -> None:
    retried = step("a", retries={"limit": 3, "backoff": {"duration": "1s"}})
    sim = Sim(inline(retried), agents={"coder": priced()})
    sim.decide()
    sim.succeed("a", outputs={"nofx.usage": {"model": "opus", "inputTokens": 5}})
    sim.decide()
    a = entry(sim.status, "a")
    assert (a.phase, a.reason, a.attempts) == ("Failed", Reason.UNPRICED_MODEL, 1)
    assert "model opus, which Agent coder has no price for (spec.pricing.models: mini, sonnet)" in (
        a.message or ""
    )


# --- metrics -----------------------------------------------------------------------------------


def test_a_finished_attempt_counts_its_tokens_and_cost_by_agent_and_model() -> None:
    def sample(name: str, **labels: str) -> float:
        labels = {"namespace": "metered", "agent": "coder"} | labels
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("nofx_tokens_total", model="sonnet", type="cached"),
        sample("nofx_cost_total", model="sonnet", currency="EUR"),
        sample("nofx_cost_total", model="", currency="EUR"),
    )
    used = (TokensUsed("sonnet", 10, 20, 30, Decimal("0.5")),)
    finished = AttemptFinished(
        step="a", index=None, attempt=1, job_name="j", agent="coder", outcome="Succeeded",
        wall_seconds=1.0, cost=Decimal("0.25"), currency="EUR", tokens=used,
    )  # fmt: skip
    metrics.count_attempt("metered", finished)
    after = (
        sample("nofx_tokens_total", model="sonnet", type="cached"),
        sample("nofx_cost_total", model="sonnet", currency="EUR"),
        sample("nofx_cost_total", model="", currency="EUR"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [30, 0.5, 0.25]
    # Names from an Agent that prices no model are not labels: a step could send any number.
    free = (TokensUsed("made-up-7", 5, 0, 0, Decimal(0), priced=False),)
    unpriced_before = sample("nofx_tokens_total", model="(unpriced)", type="input")
    metrics.count_attempt("metered", replace(finished, tokens=free))
    assert sample("nofx_tokens_total", model="(unpriced)", type="input") - unpriced_before == 5
    assert (
        REGISTRY.get_sample_value(
            "nofx_tokens_total",
            {"namespace": "metered", "agent": "coder", "model": "made-up-7", "type": "input"},
        )
        is None
    )


def test_an_agent_without_pricing_charges_in_no_currency() -> None:
    agents = {"coder": agent(), "reviewer": priced("EUR")}
    sim = Sim(inline(step("free"), step("paid", "free", agent="reviewer")), agents=agents)
    sim.decide()
    sim.tick(10)
    sim.succeed("free", outputs={"nofx.usage": {"model": "local-llama", "inputTokens": 7}})
    sim.decide()
    usage = sim.status.usage
    assert usage is not None
    assert (usage.costs, usage.cost, usage.wall_seconds) == (None, "0", 10)
    assert [(t.model, t.input_tokens, t.cost) for t in usage.tokens or []] == [
        ("local-llama", 7, "0")
    ]
    sim.tick(100)
    sim.succeed("paid")
    sim.decide()
    assert [(c.currency, c.cost) for c in sim.status.usage.costs or []] == [("EUR", "0.1")]
    assert (sim.status.usage.cost, sim.status.usage.currency) == ("0.1", "EUR")
