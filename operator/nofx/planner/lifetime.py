"""After the end: ttlSecondsAfterFinished deletes a finished Run, but never before the mirror has
stored its audit events."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from nofx.planner.facts import Decision, RunView, World

if TYPE_CHECKING:  # RunState is built from a pinned Run, which imports this module
    from nofx.planner.state import RunState

MIRROR_WAIT = timedelta(seconds=5)


def expire(run: RunView, world: World, decision: Decision) -> None:
    ttl = run.spec.ttl_seconds_after_finished
    finished = decision.status.finished_at
    if ttl is None or finished is None:
        return
    deadline = finished + timedelta(seconds=ttl)
    outbox = decision.status.audit
    if world.now >= deadline and outbox is not None and outbox.pending:
        # Deleting now would lose what the Postgres mirror has not stored yet.
        decision.wake_no_later_than(world.now + MIRROR_WAIT)
    elif world.now >= deadline:
        decision.delete_run = True
    else:
        decision.wake_no_later_than(deadline)


def schedule_expiry(state: RunState) -> None:
    ttl = state.run.spec.ttl_seconds_after_finished
    if ttl is not None and state.status.finished_at is not None:
        state.decision.wake_no_later_than(state.status.finished_at + timedelta(seconds=ttl))
