"""Accounts' monthly budgets, kept in memory for the Run reconciler: a thread of its own reads the
budget ConfigMaps of one namespace (nofx.api.account_budgets) and each account's cost this UTC
month from the mirror's Postgres, every `interval` seconds, so a reconcile never waits for
either. If a read fails, the last answer stands (and the failure is logged)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from decimal import Decimal

from nofx.api.account_budgets import BUDGET_LABEL, AccountBudget, MonthlyBudget, parse
from nofx.kube import Kube
from nofx.mirror.store import Store

log = logging.getLogger(__name__)


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def combine(
    budgets: list[tuple[str, MonthlyBudget]], spent: dict[tuple[str, str], Decimal]
) -> dict[str, AccountBudget]:
    """Each account's budget with what it spent in the budget's currency; of two ConfigMaps
    for one account, the smaller budget holds."""
    found: dict[str, AccountBudget] = {}
    for source, budget in sorted(budgets):
        limit = Decimal(budget.monthly_max_cost)
        known = found.get(budget.account)
        if known is not None and known.max_cost <= limit:
            continue
        found[budget.account] = AccountBudget(
            account=budget.account,
            max_cost=limit,
            currency=budget.currency,
            spent=spent.get((budget.account, budget.currency), Decimal(0)),
            source=source,
        )
    return found


class AccountBudgets:
    def __init__(self, kube: Kube, store: Store, namespace: str, interval: float = 30.0) -> None:
        self.kube, self.store, self.namespace, self.interval = kube, store, namespace, interval
        self._budgets: dict[str, AccountBudget] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="account-budgets", daemon=True)
        self._complaints: set[str] = set()  # bad ConfigMaps already logged

    def of(self, account: str) -> AccountBudget | None:
        with self._lock:
            return self._budgets.get(account)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # Postgres or the API server away: the last answer stands
                log.exception("could not read the accounts' monthly budgets or spend")
            self._stop.wait(self.interval)

    def refresh(self) -> None:
        config_maps = self.kube.list_config_maps(self.namespace, BUDGET_LABEL)
        budgets = []
        for config_map in config_maps:
            name = config_map["metadata"]["name"]
            parsed = parse(name, config_map.get("data"))
            if isinstance(parsed, str):
                if parsed not in self._complaints:
                    log.warning(parsed, extra={"configmap": f"{self.namespace}/{name}"})
                    self._complaints.add(parsed)
                continue
            budgets.append((f"{self.namespace}/{name}", parsed))
        spent = self.store.spent_since(month_start(datetime.now(UTC))) if budgets else {}
        with self._lock:
            self._budgets = combine(budgets, spent)
