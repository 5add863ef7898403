"""What a failed reconcile means: an outage to wait out, or a fault that retrying cannot mend;
and after how many failures in a row it shows on the Run."""

from __future__ import annotations

import http.client

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from nofx.api_errors import Conflict

# Statuses of an API server that is restarting, overloaded or unreachable through a proxy.
_TRANSIENT_STATUSES = frozenset({0, 408, 429, 500, 502, 503, 504})


def is_transient(error: BaseException) -> bool:
    """An outage or a race: the same reconcile may well work later."""
    if isinstance(error, ApiException):
        return error.status in _TRANSIENT_STATUSES
    return isinstance(
        error, Conflict | HTTPError | http.client.HTTPException | OSError | TimeoutError
    )


# When a run of failures is shown on the Run: a fault after a few tries (it then fails the Run),
# an outage once it lasted a while (about a minute of backoff; retried as long as it lasts).
FAULTS_BEFORE_FAILING = 3  # 0.5 + 1 + 2 s of retries
OUTAGE_FAILURES_BEFORE_SHOWING = 6


def failures_before_showing(transient: bool) -> int:
    return OUTAGE_FAILURES_BEFORE_SHOWING if transient else FAULTS_BEFORE_FAILING
