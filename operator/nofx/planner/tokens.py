"""Tokens a step reports and what they cost: its outputs' reserved key `nofx.usage`, read and
checked, then priced at its Agent's per-model prices. Plain values; money in Decimal only.

A step reports one model as an object, or several as a list of objects:

    {"nofx.usage": [{"model": "claude-sonnet-4", "inputTokens": 1200, "outputTokens": 300,
                     "cachedTokens": 800}, ...], ...its other outputs...}

Counts are non-negative JSON integers (absent: 0); cachedTokens are input tokens served from a
cache, counted apart from inputTokens and priced at cachedPerMillion (else the input price).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from nofx.api.pricing import MAX_PRICED_MODELS, ModelPrice, Pricing
from nofx.api.reasons import Reason
from nofx.changes import TokensUsed

USAGE_KEY = "nofx.usage"
# More than any model bills in one step; keeps every sum within Postgres' bigint.
MAX_TOKENS = 10**15
MAX_MODEL_LENGTH = 253
COUNTS = ("inputTokens", "outputTokens", "cachedTokens")
# status.usage and the usage records keep nine decimal places (the API's DecimalString).
MONEY_QUANTUM = Decimal("0.000000001")
MILLION = Decimal(1_000_000)
MAX_COST = Decimal(10**12)  # a DecimalString has at most 12 digits before the point


@dataclass(frozen=True)
class ModelUsage:
    """Tokens of one model in one step attempt."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


class UsageProblem(Exception):
    """A step's usage report that cannot be billed: the attempt fails with reason and message."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def money(amount: Decimal) -> Decimal:
    """An amount rounded to the nine decimal places that status and records keep."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)


def money_text(amount: Decimal) -> str:
    """A decimal string as the API writes money: no exponent, no trailing zeros ("0.45")."""
    text = format(money(amount), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def take_usage(outputs: Mapping[str, Any]) -> tuple[dict[str, Any], list[ModelUsage]]:
    """The outputs without the reserved key, and the usage reported under it (one entry per
    model: a model reported twice is added up). Raises UsageProblem(InvalidUsage)."""
    rest = {key: value for key, value in outputs.items() if key != USAGE_KEY}
    if USAGE_KEY not in outputs:
        return rest, []
    reported = outputs[USAGE_KEY]
    entries = [reported] if isinstance(reported, dict) else reported
    if not isinstance(entries, list):
        raise _invalid(f"must be an object or a list of objects, got {_type(reported)}")
    totals: dict[str, list[int]] = {}
    for position, entry in enumerate(entries):
        where = f"[{position}]" if isinstance(reported, list) else ""
        model, counts = _entry(entry, where)
        sums = totals.setdefault(model, [0, 0, 0])
        for index, count in enumerate(counts):
            sums[index] += count
            if sums[index] > MAX_TOKENS:
                raise _invalid(f"{model}: more than {MAX_TOKENS} {COUNTS[index]} in one attempt")
    if len(totals) > MAX_PRICED_MODELS:
        raise _invalid(f"{len(totals)} models; at most {MAX_PRICED_MODELS} per attempt")
    return rest, [ModelUsage(model, *counts) for model, counts in totals.items()]


def _entry(entry: Any, where: str) -> tuple[str, list[int]]:
    if not isinstance(entry, dict):
        raise _invalid(f"{where}: must be an object, got {_type(entry)}")
    unknown = sorted(set(entry) - {"model", *COUNTS})
    if unknown:
        raise _invalid(f"{where}: unknown key {unknown[0]!r} (known: model, {', '.join(COUNTS)})")
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_LENGTH:
        raise _invalid(f"{where}.model: must be a model name of 1 to {MAX_MODEL_LENGTH} characters")
    counts = []
    for key in COUNTS:
        count = entry.get(key, 0)
        # bool is an int in Python, not a count in JSON.
        if not isinstance(count, int) or isinstance(count, bool):
            raise _invalid(f"{where}.{key}: must be a whole number, got {_type(count)} {count!r}")
        if count < 0:
            raise _invalid(f"{where}.{key}: must not be negative, got {count}")
        counts.append(count)
    return model, counts


def _invalid(detail: str) -> UsageProblem:
    return UsageProblem(Reason.INVALID_USAGE, f"outputs {USAGE_KEY}{detail}"[:500])


def _type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
        type(value), "null" if value is None else "number"
    )


def price(usages: Sequence[ModelUsage], pricing: Pricing | None, agent: str) -> list[TokensUsed]:
    """Each model's tokens at the Agent's prices. An Agent without model prices meters tokens
    at no cost; one with prices refuses a model it does not list (UsageProblem)."""
    if not pricing or not pricing.models:
        return [_used(usage, Decimal(0), priced=False) for usage in usages]
    prices: dict[str, ModelPrice] = {}
    for listed in pricing.models:
        prices.setdefault(listed.model, listed)
    priced = []
    for usage in usages:
        entry = prices.get(usage.model)
        if entry is None:
            known = ", ".join(sorted(prices))
            message = (
                f"the step reported tokens of model {usage.model}, which Agent {agent} "
                f"has no price for (spec.pricing.models: {known})"
            )
            raise UsageProblem(Reason.UNPRICED_MODEL, message[:500])
        amount = cost(usage, entry)
        if amount >= MAX_COST:
            raise _invalid(f": {usage.model} would cost {amount}, more than can be recorded")
        priced.append(_used(usage, amount))
    return priced


def _used(usage: ModelUsage, amount: Decimal, priced: bool = True) -> TokensUsed:
    return TokensUsed(
        usage.model, usage.input_tokens, usage.output_tokens, usage.cached_tokens, amount, priced
    )


def cost(usage: ModelUsage, prices: ModelPrice) -> Decimal:
    """tokens x price per million, for input, output and cached tokens, to nine places."""
    cached = prices.cached_per_million or prices.input_per_million
    with localcontext() as exact:
        exact.prec = 60  # 10^15 tokens at 12+9 digit prices, with no rounding before ours
        total = (
            usage.input_tokens * Decimal(prices.input_per_million)
            + usage.output_tokens * Decimal(prices.output_per_million)
            + usage.cached_tokens * Decimal(cached)
        )
        return money(total / MILLION)
