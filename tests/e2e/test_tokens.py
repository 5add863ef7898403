"""Tokens, cost and budgets with the real operator, control plane and Postgres: steps that report
tokens under nofx.usage are priced per model, stored per model and shown by `nofx usage --by
model` and the metrics; a Run whose recorded cost passes its budget stops mid-way; a bad usage
report fails its step with a reason."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest

from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step, steps_by_name
from .test_mirror import Mirrored, fresh_namespace, mirrored, wait_mirrored

__all__ = ["mirrored"]  # the fixture, imported so that this module gets a plane of its own


@pytest.fixture(scope="module")
def metered(mirrored: Mirrored) -> Mirrored:
    return mirrored


PRICES = {
    "currency": "EUR",
    "perHour": "36",
    "models": [
        {"model": "sonnet", "inputPerMillion": "3", "outputPerMillion": "15",
         "cachedPerMillion": "0.3"},
        {"model": "mini", "inputPerMillion": "0.15", "outputPerMillion": "0.6"},
    ],
}  # fmt: skip


def reports(usage: object, duration: str = "1s") -> dict[str, str]:
    """kwok annotations: the step runs `duration`, then reports this nofx.usage."""
    message = json.dumps({"done": True, "nofx.usage": usage})
    return {"kwok.nofx.dev/duration": duration, "kwok.nofx.dev/message": message}


def test_tokens_are_priced_per_model_recorded_and_shown_by_model(metered: Mirrored) -> None:
    namespace = fresh_namespace(metered.kubectl, "tokens", account="acme-ai")
    usage = [
        {"model": "sonnet", "inputTokens": 20000, "outputTokens": 4000, "cachedTokens": 100000},
        {"model": "mini", "inputTokens": 1000000},
    ]
    apply(
        metered.kubectl,
        namespace,
        agent("writer", reports(usage), pricing=PRICES),
        run(
            "metered", steps=[step("draft", "writer"), step("edit", "writer", dependsOn=["draft"])]
        ),
    )
    body = wait_for_phase(metered.kubectl, namespace, "metered", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded", body["status"].get("message")
    assert steps_by_name(body)["draft"]["outputs"] == {"done": True}  # the key is taken out
    status_usage = body["status"]["usage"]
    # Per attempt: sonnet 0.06 + 0.06 + 0.03, mini 0.15; twice.
    tokens = {t["model"]: t for t in status_usage["tokens"]}
    assert tokens["sonnet"] == {
        "model": "sonnet", "inputTokens": 40000, "outputTokens": 8000, "cachedTokens": 200000,
        "cost": "0.3", "currency": "EUR",
    }  # fmt: skip
    assert tokens["mini"]["cost"] == "0.3"
    wall = Decimal(str(status_usage["wallSeconds"])) * 36 / 3600
    assert Decimal(status_usage["cost"]) == Decimal("0.6") + wall.quantize(Decimal("0.000000001"))
    assert status_usage["currency"] == "EUR"

    wait_mirrored(metered, namespace, ["metered"])
    stored = metered.sql(
        "SELECT model, sum(input_tokens), sum(cached_tokens), sum(cost), min(currency)"
        " FROM token_usage WHERE account = 'acme-ai' GROUP BY model ORDER BY model"
    )
    assert stored == [
        ("mini", 2000000, 0, Decimal("0.3"), "EUR"),
        ("sonnet", 40000, 200000, Decimal("0.3"), "EUR"),
    ]
    by_model = json.loads(
        metered.nofx("usage", "--account", "acme-ai", "--since", "2020-01-01", "--by", "model",
                      "-o", "json").stdout
    )  # fmt: skip
    assert [(r["agent"], r["model"], r["attempts"], r["output_tokens"]) for r in by_model] == [
        ("writer", None, 2, 0),  # the wall time
        ("writer", "mini", 2, 0),
        ("writer", "sonnet", 2, 8000),
    ]
    table = metered.nofx("usage", "--since", "2020-01-01", "--by", "model").stdout
    assert "(wall time)" in table and "acme-ai" in table and "sonnet" in table
    [total] = json.loads(
        metered.nofx("usage", "--account", "acme-ai", "--since", "2020-01-01", "-o", "json").stdout
    )
    assert Decimal(total["token_cost"]) == Decimal("0.6")
    assert Decimal(total["cost"]) == Decimal(status_usage["cost"])

    metrics = metered.operator.metrics()
    assert (
        'nofx_tokens_total{agent="writer",model="sonnet",namespace="tokens",type="cached"} 200000.0'
        in metrics
    )
    assert 'nofx_cost_total{agent="writer",currency="EUR",model="mini",namespace="tokens"} 0.3' in (
        metrics
    )


def test_a_run_past_its_budget_stops_its_running_step_and_starts_nothing_new(
    metered: Mirrored,
) -> None:
    namespace = fresh_namespace(metered.kubectl, "budget", account="acme-ai")
    costly = reports({"model": "sonnet", "outputTokens": 100000})  # 1.5 EUR
    apply(
        metered.kubectl,
        namespace,
        agent("costly", costly, pricing=PRICES),
        agent("slow", {"kwok.nofx.dev/duration": "120s"}, pricing=PRICES),
        run(
            "capped",
            steps=[
                step("expensive", "costly"),
                step("long", "slow"),
                step("after", "costly", dependsOn=["expensive"]),
            ],
            budget={"maxCost": "1"},
        ),
    )
    body = wait_for_phase(metered.kubectl, namespace, "capped", {"Succeeded", "Failed"})
    status = body["status"]
    [succeeded] = [c for c in status["conditions"] if c["type"] == "Succeeded"]
    assert (status["phase"], succeeded["reason"]) == ("Failed", "BudgetExceeded")
    assert "passed its budget.maxCost 1" in succeeded["message"]
    steps = steps_by_name(body)
    assert {name: s["phase"] for name, s in steps.items()} == {
        "expensive": "Succeeded", "long": "Cancelled", "after": "Skipped",
    }  # fmt: skip
    jobs = metered.kubectl.json("get", "jobs", "-n", namespace)["items"]
    live = [j["metadata"]["name"] for j in jobs if not j["metadata"].get("deletionTimestamp")]
    assert steps["long"]["jobName"] not in live  # stopped
    assert not any("after" in name for name in live)  # never started
    wait_mirrored(metered, namespace, ["capped"])
    timeline = json.loads(metered.nofx("audit", "capped", "-n", namespace, "-o", "json").stdout)
    assert timeline[-1]["reason"] == "RunFailed"
    assert "passed its budget.maxCost 1" in timeline[-1]["message"]


def test_a_bad_usage_report_fails_the_step_with_a_reason(metered: Mirrored) -> None:
    namespace = fresh_namespace(metered.kubectl, "bad-usage")
    apply(
        metered.kubectl,
        namespace,
        agent("liar", reports({"model": "sonnet", "inputTokens": -7}), pricing=PRICES),
        agent("unknown", reports({"model": "opus", "inputTokens": 7}), pricing=PRICES),
        run("negative", steps=[step("work", "liar")]),
        run("unpriced", steps=[step("work", "unknown")]),
    )
    for name, reason, says in (
        ("negative", "InvalidUsage", "nofx.usage.inputTokens: must not be negative, got -7"),
        ("unpriced", "UnpricedModel", "model opus, which Agent unknown has no price for"),
    ):
        body = wait_for_phase(metered.kubectl, namespace, name, {"Succeeded", "Failed"})
        work = steps_by_name(body)["work"]
        assert (body["status"]["phase"], work["reason"]) == ("Failed", reason)
        assert says in work["message"]


def test_an_account_past_its_monthly_budget_starts_no_new_run(metered: Mirrored) -> None:
    """Last in the module: it runs the operator again, reading the accounts' budgets."""
    kubectl = metered.kubectl
    namespace = fresh_namespace(kubectl, "monthly", account="thrifty")
    kubectl("create", "namespace", "nofx-system")
    budget = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "budget-thrifty", "labels": {"nofx.dev/account-budget": "true"}},
        "data": {"account": "thrifty", "monthlyMaxCost": "1", "currency": "EUR"},
    }
    apply(kubectl, "nofx-system", budget)
    budgeted = OperatorProcess(
        metered.plane, metered.operator.log_path.parent, *metered.operator.extra,
        "--account-budgets-namespace", "nofx-system", "--account-budgets-interval", "1",
    )  # fmt: skip
    metered.operator.stop()
    budgeted.start()
    try:
        costly = reports({"model": "sonnet", "outputTokens": 100000})  # 1.5 EUR
        apply(kubectl, namespace, agent("costly", costly, pricing=PRICES),
              run("first", steps=[step("work", "costly")]))  # fmt: skip
        first = wait_for_phase(kubectl, namespace, "first", {"Succeeded", "Failed"})
        assert first["status"]["phase"] == "Succeeded"
        wait_mirrored(metered, namespace, ["first"])
        time.sleep(3)  # the budgets' reader sees the spend within its interval (1 s)
        apply(kubectl, namespace, run("second", steps=[step("work", "costly")]))
        held = wait_for_phase(kubectl, namespace, "second", {"Pending"}, timeout=30)
        [ready] = [c for c in held["status"]["conditions"] if c["type"] == "Ready"]
        assert ready["reason"] == "AccountBudgetExceeded"
        assert "account thrifty spent 1.5" in ready["message"]
        assert (
            "its monthly budget is 1 EUR (ConfigMap nofx-system/budget-thrifty)"
            in (ready["message"])
        )
        time.sleep(1)
        jobs = kubectl.json("get", "jobs", "-n", namespace, "-l", "nofx.dev/run=second")
        assert jobs["items"] == []  # held: no Job (unit tests: a raised budget releases it)
    finally:
        budgeted.stop()
