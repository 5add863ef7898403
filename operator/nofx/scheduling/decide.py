"""What a Schedule does now, decided from a snapshot: the Schedule, the clock and its Runs.

Like a CronJob: after downtime only the most recent missed time is started, and only within
startingDeadlineSeconds; a Run is named after its scheduled time, so a pass repeated after an
operator restart finds the Run it already created instead of starting a second one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from nofx.api.common import READY
from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.api.schedule import ScheduleSpec, ScheduleStatus
from nofx.planner.conditions import set_condition
from nofx.scheduling.times import MAX_MISSED, missed_times, next_time

MISSED = "Missed"  # condition type: the last scheduled time was not started on time, and why
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ScheduleReason(StrEnum):
    SCHEDULED = "Scheduled"
    SUSPENDED = "Suspended"
    ON_TIME = "OnTime"
    DEADLINE_EXCEEDED = "DeadlineExceeded"  # later than startingDeadlineSeconds
    CONCURRENCY_FORBIDDEN = "ConcurrencyForbidden"  # Forbid, and an earlier Run is active
    TOO_MANY_MISSED = "TooManyMissed"  # more than MAX_MISSED times passed unstarted
    RUN_REJECTED = "RunRejected"  # the API server refused the Run (its admission, its schema)


@dataclass(frozen=True)
class ScheduledRunView:
    """One Run of the Schedule as its index sees it."""

    name: str
    phase: str | None
    scheduled_at: datetime | None
    cancel: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_RUN_PHASES


@dataclass(frozen=True)
class ScheduleFacts:
    name: str
    spec: ScheduleSpec
    status: ScheduleStatus
    generation: int | None
    created_at: datetime
    now: datetime
    runs: tuple[ScheduledRunView, ...]


@dataclass(frozen=True)
class StartRun:
    name: str
    scheduled_at: datetime


@dataclass
class SchedulePlan:
    status: ScheduleStatus
    start: StartRun | None = None
    cancel: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    wake_at: datetime | None = None  # None: only a change of the Schedule or its Runs


def run_name(schedule: str, scheduled_at: datetime) -> str:
    """The Run of one scheduled time: <schedule>-<minutes since the Unix epoch>."""
    return f"{schedule}-{int(scheduled_at.timestamp()) // 60}"


def decide(facts: ScheduleFacts) -> SchedulePlan:
    spec, now = facts.spec, facts.now
    status = facts.status.model_copy(deep=True)
    status.observed_generation = facts.generation
    active = [run for run in facts.runs if not run.finished]
    plan = SchedulePlan(status=status, delete=expired_history(facts.runs, spec))
    if spec.suspend:
        status.next_schedule_time = None
        set_condition(
            status, READY, "False", ScheduleReason.SUSPENDED, "suspended: no Run starts", now
        )
        return _with_active(plan, active)
    status.next_schedule_time = plan.wake_at = next_time(spec.schedule, spec.time_zone, now)
    set_condition(status, READY, "True", ScheduleReason.SCHEDULED, "the schedule is valid", now)
    since = status.last_schedule_time or facts.created_at
    missed = missed_times(spec.schedule, spec.time_zone, since, now)
    if missed.latest is None:
        return _with_active(plan, active)
    latest, name = missed.latest, run_name(facts.name, missed.latest)
    at = latest.isoformat()
    if any(run.name == name for run in facts.runs):
        status.last_schedule_time = latest  # started before a restart lost the status update
        return _with_active(plan, active)
    deadline = spec.starting_deadline_seconds
    if deadline is not None and (now - latest).total_seconds() > deadline:
        message = f"the Run of {at} was not started: more than {deadline}s late"
        set_condition(status, MISSED, "True", ScheduleReason.DEADLINE_EXCEEDED, message, now)
        return _with_active(plan, active)
    if spec.concurrency_policy == "Forbid" and active:
        names = ", ".join(run.name for run in active)
        message = f"the Run of {at} waits for {names} to finish (concurrencyPolicy Forbid)"
        set_condition(status, MISSED, "True", ScheduleReason.CONCURRENCY_FORBIDDEN, message, now)
        return _with_active(plan, active)
    if spec.concurrency_policy == "Replace":
        plan.cancel = [run.name for run in active if not run.cancel]
    plan.start = StartRun(name, latest)
    status.last_schedule_time = latest
    if missed.too_many:
        message = (
            f"more than {MAX_MISSED} scheduled times passed unstarted; started only the Run "
            f"of {at}: set or lower startingDeadlineSeconds, or check the clock"
        )
        set_condition(status, MISSED, "True", ScheduleReason.TOO_MANY_MISSED, message, now)
    else:
        set_condition(
            status, MISSED, "False", ScheduleReason.ON_TIME, f"started the Run of {at}", now
        )
    return _with_active(plan, [*active, ScheduledRunView(name, None, latest)])


def refused(plan: SchedulePlan, problem: str, now: datetime) -> None:
    """The API server refused the Run the plan started. Its scheduled time counts as handled
    (sending the same Run again would be refused again): it is Missed, with the server's words,
    and the next scheduled time tries again."""
    assert plan.start is not None
    started = plan.start
    plan.start = None
    active = [name for name in plan.status.active or [] if name != started.name]
    plan.status.active = active or None
    message = f"the Run of {started.scheduled_at.isoformat()} was refused: {problem}"
    set_condition(plan.status, MISSED, "True", ScheduleReason.RUN_REJECTED, message, now)


def expired_history(runs: tuple[ScheduledRunView, ...], spec: ScheduleSpec) -> list[str]:
    """Finished Runs past the history limits, oldest first: Succeeded ones beyond
    successfulRunsHistoryLimit, Failed and Cancelled ones beyond failedRunsHistoryLimit."""
    newest_first = sorted(runs, key=lambda run: (run.scheduled_at or EPOCH, run.name), reverse=True)
    succeeded = [run.name for run in newest_first if run.phase == "Succeeded"]
    failed = [run.name for run in newest_first if run.finished and run.phase != "Succeeded"]
    expired = (
        succeeded[spec.successful_runs_history_limit :] + failed[spec.failed_runs_history_limit :]
    )
    return sorted(expired, key=[run.name for run in reversed(newest_first)].index)


def _with_active(plan: SchedulePlan, active: list[ScheduledRunView]) -> SchedulePlan:
    plan.status.active = sorted(run.name for run in active) or None
    return plan
