"""An account's monthly budget: a ConfigMap in the operator's own namespace (tenants cannot write
there), labelled nofx.dev/account-budget, naming the account, the most it may spend in a UTC
calendar month and the currency:

    metadata: {name: budget-acme, namespace: nofx-system, labels: {nofx.dev/account-budget: "true"}}
    data: {account: acme, monthlyMaxCost: "500.00", currency: USD}

Once the account's recorded cost this month (in that currency, in this region's Postgres)
reaches it, its new Runs wait Pending with reason AccountBudgetExceeded; Runs already started go
on (their own budget stops them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from pydantic import Field, ValidationError

from nofx.api.common import ApiModel, Currency, DecimalString, Tag

BUDGET_LABEL = "nofx.dev/account-budget"


class MonthlyBudget(ApiModel):
    """The data of an account budget ConfigMap."""

    account: Tag = Field(description="The account, as namespaces are labelled with it.")
    monthly_max_cost: DecimalString = Field(description="Most it may spend in a UTC month.")
    currency: Currency = Field(default="USD", description="ISO 4217 currency of the budget.")


@dataclass(frozen=True)
class AccountBudget:
    """An account's monthly budget and what it recorded this month, in the budget's currency."""

    account: str
    max_cost: Decimal
    currency: str
    spent: Decimal
    source: str  # the ConfigMap, for the message

    @property
    def exceeded(self) -> bool:
        return self.spent >= self.max_cost


def parse(name: str, data: Mapping[str, str] | None) -> MonthlyBudget | str:
    """A ConfigMap's budget, or why it is not one (for the operator's log)."""
    try:
        return MonthlyBudget.model_validate(dict(data or {}))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'data'}: {e['msg']}"
            for e in error.errors()
        )
        return f"ConfigMap {name} is not an account budget: {problems}"
