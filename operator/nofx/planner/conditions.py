"""Writing a Run's and its steps' phases: conditions (lastTransitionTime moves only when the
status changes), the end of a Run or a step, and bounded messages."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from nofx.api.common import READY, SUCCEEDED, Condition
from nofx.api.reasons import Reason
from nofx.api.run import (
    RunStatus,
    StepStatus,
)

RECONCILE_ERROR = "ReconcileError"  # condition type: the operator keeps failing on this Run
MAX_MESSAGE = 4096  # status messages' maxLength


def finish(status: RunStatus, now: datetime, phase: str, reason: str, message: str) -> None:
    status.phase = phase  # type: ignore[assignment]
    status.finished_at = now
    status.message = message = bounded(message)
    set_condition(
        status, SUCCEEDED, "True" if phase == "Succeeded" else "False", reason, message, now
    )


class HasConditions(Protocol):
    """A status with conditions: a Run's or a Schedule's."""

    conditions: list[Condition] | None
    observed_generation: int | None


def set_condition(
    status: HasConditions, kind: str, value: str, reason: str, message: str, now: datetime
) -> None:
    """Sets one condition; lastTransitionTime moves only when its status changes."""
    conditions = [c for c in status.conditions or [] if c.type != kind]
    previous = next((c for c in status.conditions or [] if c.type == kind), None)
    changed_at = previous.last_transition_time if previous and previous.status == value else now
    conditions.append(
        Condition(
            type=kind,
            status=value,  # type: ignore[arg-type]
            reason=reason,
            message=message[:32768],
            last_transition_time=changed_at,
            observed_generation=status.observed_generation,
        )
    )
    status.conditions = sorted(conditions, key=lambda c: c.type)


def pending(status: RunStatus, now: datetime, reason: str, message: str) -> None:
    status.phase = "Pending"
    status.message = message = bounded(message)
    set_condition(status, READY, "False", reason, message, now)
    set_condition(status, SUCCEEDED, "Unknown", reason, message, now)


# --- after the end: time to live ------------------------------------------------------------


def end_entry(
    entry: StepStatus, now: datetime, phase: str, message: str, reason: Reason | None = None
) -> None:
    entry.phase = phase  # type: ignore[assignment]
    entry.reason = reason
    entry.message = bounded(message)
    entry.finished_at = now
    entry.next_attempt_at = None


def bounded(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def reconcile_error(status: RunStatus, now: datetime, reason: str, message: str) -> RunStatus:
    """The status with a ReconcileError condition: the operator keeps retrying this Run."""
    shown = status.model_copy(deep=True)
    set_condition(shown, RECONCILE_ERROR, "True", reason, message, now)
    return shown


# --- before the start: resolve and pin ------------------------------------------------------
