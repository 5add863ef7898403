"""What changed in a Run: transitions of its phase and its steps' phases, and finished step
attempts. The planner makes them; the reconciler tells them as Events and logs, the mirror
stores them as audit rows and usage records. Plain data, shared by both sides."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from nofx.api.run import RunStatus, StepStatus


@dataclass(frozen=True)
class TokensUsed:
    """Tokens of one model that a step attempt reported, and their cost in its currency."""

    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: Decimal
    priced: bool = True  # False: its Agent prices no model (then any name may come)


@dataclass(frozen=True)
class AttemptFinished:
    """One finished step attempt, for usage metering."""

    step: str
    index: int | None
    attempt: int
    job_name: str
    agent: str
    outcome: str
    wall_seconds: float
    cost: Decimal
    currency: str
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cpu_request: str | None = None
    memory_request: str | None = None
    tokens: tuple[TokensUsed, ...] = ()  # cost above is the wall time's; these come on top
    # A cached step's successful attempt: its cache key and the outputs a later hit reuses.
    cache_key: str | None = None
    outputs: dict[str, Any] | None = None
    # Kueue: the LocalQueue of its Job, and the seconds from the Job's creation to Kueue's
    # admission of it (not billed: wall_seconds is the container's own run time).
    queue: str | None = None
    queued_seconds: float | None = None

    @property
    def token_cost(self) -> Decimal:
        return sum((used.cost for used in self.tokens), Decimal(0))


@dataclass(frozen=True)
class Transition:
    """One change of a Run's or a step's phase: an Event on the Run, a log line, an audit row."""

    step: str | None  # None: the Run itself
    index: int | None
    attempt: int | None
    from_phase: str | None
    to_phase: str
    reason: str
    message: str

    @property
    def announced(self) -> bool:
        """Worth a Kubernetes Event: how the Run ended, and every warning. A step's ordinary
        progress, and the Run starting to run, are in status (`kubectl get runs`) and the
        audit trail already; an Event for each is an API write that tells nothing new (so is
        the Run going from Running to Queued and back as Kueue admits its steps)."""
        return (self.step is None and self.to_phase not in ("Running", "Queued")) or self.warning

    @property
    def warning(self) -> bool:
        return self.reason in ("StepFailed", "StepRetrying", "RunFailed", "Pending")


_STEP_REASONS = {
    "Queued": "StepQueued",
    "Running": "StepStarted",
    "Succeeded": "StepSucceeded",
    "Failed": "StepFailed",
    "Skipped": "StepSkipped",
    "Cancelled": "StepCancelled",
}


def transitions(old: RunStatus, new: RunStatus) -> list[Transition]:
    """What changed between two statuses, in the order it happened: the Run starting before
    its steps, the steps in status order, and any other change of the Run (which follows from
    its steps) after them."""
    before = {(entry.name, entry.index): entry for entry in old.steps or []}
    changes = []
    for entry in new.steps or []:
        previous = before.get((entry.name, entry.index))
        old_phase = previous.phase if previous else None
        old_attempts = previous.attempts if previous else None
        if old_phase == entry.phase and old_attempts == entry.attempts:
            continue
        if entry.phase == "Pending" and old_phase is None:
            continue  # listing the plan is not news
        if entry.phase == "Waiting":
            reason = "StepRetrying" if entry.next_attempt_at else "StepWaiting"
        elif entry.phase == "Succeeded" and entry.reason == "Cached":
            reason = "StepCached"  # outputs reused from an earlier Run: no Job, no cost
        else:
            reason = _STEP_REASONS.get(entry.phase, "StepPending")
        changes.append(
            Transition(
                step=entry.name,
                index=entry.index,
                attempt=entry.attempts,
                from_phase=old_phase,
                to_phase=entry.phase,
                reason=reason,
                message=step_label(entry) + (f": {entry.message}" if entry.message else ""),
            )
        )
    if new.phase and new.phase != old.phase:
        starts = new.phase == "Running" and old.phase in (None, "Pending")
        position = 0 if starts else len(changes)
        changes.insert(
            position,
            Transition(
                step=None,
                index=None,
                attempt=None,
                from_phase=old.phase,
                to_phase=new.phase,
                reason="Pending" if new.phase == "Pending" else f"Run{new.phase}",
                message=new.message or new.phase,
            ),
        )
    return changes


def step_label(entry: StepStatus) -> str:
    item = f"[{entry.index}]" if entry.index is not None else ""
    return f"step {entry.name}{item}"
