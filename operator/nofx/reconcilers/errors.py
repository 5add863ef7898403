"""What a failed reconcile means: an outage to wait out, or a fault that retrying cannot mend;
and how long to wait before the next try."""

from __future__ import annotations

import http.client
import threading

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from nofx.kube import Conflict

# Statuses of an API server that is restarting, overloaded or unreachable through a proxy.
_TRANSIENT_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})


def is_transient(error: BaseException) -> bool:
    """An outage or a race: the same reconcile may well work later."""
    if isinstance(error, ApiException):
        return error.status in _TRANSIENT_STATUSES
    return isinstance(
        error, Conflict | HTTPError | http.client.HTTPException | OSError | TimeoutError
    )


class ErrorBudget:
    """Consecutive failures per Run, the backoff before its next try (0.5 s doubling up to
    30 s), and when a failure is shown on the Run: a fault after a few tries (it then fails the
    Run), an outage only once it lasted a while (it is retried as long as it lasts)."""

    FIRST_DELAY = 0.5
    MAX_DELAY = 30.0
    FAULTS_BEFORE_FAILING = 3  # 0.5 + 1 + 2 s of retries
    OUTAGE_FAILURES_BEFORE_SHOWING = 6  # about a minute of retries

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], int] = {}

    def failed(self, key: tuple[str, str]) -> tuple[int, float]:
        """Counts one more failure; returns (failures in a row, seconds to wait)."""
        with self._lock:
            failures = self._failures[key] = self._failures.get(key, 0) + 1
        return failures, min(self.MAX_DELAY, self.FIRST_DELAY * 2 ** (failures - 1))

    def show_after(self, transient: bool) -> int:
        return self.OUTAGE_FAILURES_BEFORE_SHOWING if transient else self.FAULTS_BEFORE_FAILING

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)
