"""When a Run's pass cannot go on: its spec or status does not validate, or the pass raised.
Each ends in a phase, reason and message on the Run itself (through the reconciler's
carry-out), or, for an outage, in a condition saying it is being retried."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from nofx import metrics
from nofx.api.reasons import Reason
from nofx.api.run import TERMINAL_RUN_PHASES, RunSpec, RunStatus
from nofx.kube import Kube
from nofx.planner.conditions import reconcile_error
from nofx.planner.facts import Decision, RunView
from nofx.planner.stopping import abort_run
from nofx.reconcilers import apply, observe
from nofx.reconcilers.errors import failures_before_showing, is_transient
from nofx.workqueue import Result, Retry

log = logging.getLogger("nofx.runs")

RunKey = tuple[str, str]  # (namespace, name)


class CarryOut(Protocol):
    """RunReconciler._carry_out: applies a decision to the Run."""

    def __call__(
        self,
        run: RunView,
        body: dict[str, Any],
        decision: Decision,
        waiters_version: int,
        *,
        replace_status: bool = False,
    ) -> Result: ...


def view_or_fail(carry_out: CarryOut, key: RunKey, body: dict[str, Any]) -> RunView | None:
    """The Run as plain data; a spec or status that does not validate (the API server's
    schema let it through, or someone rewrote status) fails the Run with the error."""
    status: RunStatus | None = None
    try:
        status = RunStatus.model_validate(body.get("status") or {})
        spec = RunSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        if status is not None and status.phase in TERMINAL_RUN_PHASES:
            return None  # failed already: nothing is left to stop
        where = "spec" if status is not None else "status"
        reason = Reason.INVALID_SPEC if status is not None else Reason.INCONSISTENT_STATUS
        message = f"the Run's {where} does not validate: {error}"
        old = status or RunStatus(audit=observe.audit_outbox(body))
        view = observe.view(key, body, RunSpec.model_construct(), old)  # spec unused here
        failed = abort_run(view, datetime.now(UTC), reason, message)
        carry_out(view, body, failed, 0, replace_status=status is None)
        return None
    return observe.view(key, body, spec, status)


def report_failure(
    kube: Kube, carry_out: CarryOut, key: RunKey, error: Exception, retry: Retry
) -> None:
    """A pass raised; the queue retries it after retry.delay, and the decision is made
    from scratch again, so a retry never repeats work. An outage (transient) is retried
    for as long as it lasts, shown on the Run once it lasted; anything else is a fault of
    this Run or of the operator that retrying will not mend: after a few tries the Run
    fails with it."""
    transient = is_transient(error)
    detail = f"{type(error).__name__}: {error}"[:1000]
    metrics.RECONCILE_ERRORS.labels(transient=str(transient).lower()).inc()
    log.error(
        "reconcile failed; retrying in %.1f s",
        retry.delay.total_seconds(),
        exc_info=error,
        extra={"run": key[1], "failures": retry.failures, "transient": transient},
    )
    if retry.failures < failures_before_showing(transient):
        return
    try:
        body = kube.get("runs", *key)
        if body is None:
            return
        status = RunStatus.model_validate(body.get("status") or {})
        now = datetime.now(UTC)
        if transient:
            message = f"retrying after {retry.failures} failures: {detail}"
            shown = reconcile_error(status, now, type(error).__name__, message)
            apply.patch_status(kube, key, body, shown.to_dict(), status.to_dict())
            return
        run = observe.view(key, body, RunSpec.model_validate(body.get("spec") or {}), status)
        message = f"the operator failed on this Run {retry.failures} times: {detail}"
        carry_out(run, body, abort_run(run, now, Reason.RECONCILE_ERROR, message), 0)
    except Exception:
        log.exception("could not report the failure on the Run", extra={"run": key[1]})
