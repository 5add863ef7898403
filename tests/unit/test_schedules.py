"""Schedules decided without a cluster: missed times, deadlines, concurrency policies, history
limits, time zones and the names that make a second start after a restart a no-op."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import ValidationError

from nofx.api.schedule import Schedule, ScheduleSpec, ScheduleStatus
from nofx.api_errors import Rejected
from nofx.kube import Kube
from nofx.reconcilers.run_watch import RunWatch
from nofx.reconcilers.schedules import ScheduleReconciler
from nofx.scheduling.decide import (
    MISSED,
    ScheduledRunView,
    ScheduleFacts,
    SchedulePlan,
    decide,
    run_name,
)
from nofx.scheduling.times import missed_times, next_time
from tests.unit.fake_kube import FakeKube

CREATED = datetime(2026, 1, 5, 8, 0, 30, tzinfo=UTC)


def spec(**fields: Any) -> ScheduleSpec:
    return ScheduleSpec.model_validate(
        {"schedule": "*/10 * * * *", "runTemplate": {"templateRef": {"name": "t"}}, **fields}
    )


def plan(
    now: datetime,
    runs: tuple[ScheduledRunView, ...] = (),
    last: datetime | None = None,
    **fields: Any,
) -> SchedulePlan:
    return decide(
        ScheduleFacts(
            name="nightly",
            spec=spec(**fields),
            status=ScheduleStatus(last_schedule_time=last),
            generation=1,
            created_at=CREATED,
            now=now,
            runs=runs,
        )
    )


def at(hour: int, minute: int, second: int = 0, day: int = 5) -> datetime:
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


def running(name: str, phase: str | None = "Running", scheduled: datetime | None = None) -> Any:
    return ScheduledRunView(name, phase, scheduled)


def condition(result: SchedulePlan, kind: str) -> tuple[str, str] | None:
    found = [c for c in result.status.conditions or [] if c.type == kind]
    return (found[0].status, found[0].reason) if found else None


def test_names_derive_from_the_scheduled_time() -> None:
    assert run_name("nightly", at(8, 10)) == f"nightly-{int(at(8, 10).timestamp()) // 60}"
    assert run_name("nightly", at(8, 10)) != run_name("nightly", at(8, 20))


def test_nothing_starts_before_the_first_time_and_the_timer_is_set_for_it() -> None:
    result = plan(at(8, 5))
    assert result.start is None
    assert result.wake_at == result.status.next_schedule_time == at(8, 10)
    assert condition(result, "Ready") == ("True", "Scheduled")


def test_a_due_time_starts_its_run_and_records_it() -> None:
    result = plan(at(8, 10, 1))
    assert result.start is not None and result.start.scheduled_at == at(8, 10)
    assert result.status.last_schedule_time == at(8, 10)
    assert result.status.next_schedule_time == at(8, 20)
    assert result.status.active == [run_name("nightly", at(8, 10))]
    assert condition(result, MISSED) == ("False", "OnTime")


def test_after_downtime_only_the_most_recent_missed_time_starts() -> None:
    result = plan(at(9, 35), last=at(8, 10))
    assert result.start is not None and result.start.scheduled_at == at(9, 30)


def test_a_run_that_exists_is_not_started_again_after_a_restart() -> None:
    name = run_name("nightly", at(8, 10))
    result = plan(at(8, 10, 5), runs=(running(name, None, at(8, 10)),))
    assert result.start is None
    assert result.status.last_schedule_time == at(8, 10)
    assert result.status.active == [name]


def test_a_missed_time_past_the_starting_deadline_is_skipped() -> None:
    result = plan(at(9, 35), last=at(9, 20), startingDeadlineSeconds=120)
    assert result.start is None
    assert condition(result, MISSED) == ("True", "DeadlineExceeded")
    assert plan(at(9, 31), last=at(9, 20), startingDeadlineSeconds=120).start is not None


def test_more_than_a_hundred_missed_times_warn_and_start_the_latest() -> None:
    result = plan(at(8, 0, day=20), last=at(8, 0, day=5))
    assert result.start is not None and result.start.scheduled_at == at(8, 0, day=20)
    assert condition(result, MISSED) == ("True", "TooManyMissed")


def test_forbid_waits_while_a_run_is_active_and_starts_once_it_finished() -> None:
    earlier = running("nightly-1", "Running", at(8, 0))
    held = plan(at(8, 10, 1), runs=(earlier,), last=at(8, 0), concurrencyPolicy="Forbid")
    assert held.start is None and held.cancel == []
    assert condition(held, MISSED) == ("True", "ConcurrencyForbidden")
    assert held.status.last_schedule_time == at(8, 0)
    done = running("nightly-1", "Succeeded", at(8, 0))
    later = plan(at(8, 12), runs=(done,), last=at(8, 0), concurrencyPolicy="Forbid")
    assert later.start is not None and later.start.scheduled_at == at(8, 10)


def test_replace_cancels_the_active_run_and_starts_the_new_one() -> None:
    earlier = running("nightly-1", "Running", at(8, 0))
    result = plan(at(8, 10, 1), runs=(earlier,), last=at(8, 0), concurrencyPolicy="Replace")
    assert result.cancel == ["nightly-1"]
    assert result.start is not None


def test_allow_starts_beside_the_active_run() -> None:
    earlier = running("nightly-1", "Running", at(8, 0))
    result = plan(at(8, 10, 1), runs=(earlier,), last=at(8, 0))
    assert result.start is not None and result.cancel == []
    assert result.status.active == sorted(["nightly-1", result.start.name])


def test_suspended_starts_nothing_and_has_no_next_time() -> None:
    result = plan(at(8, 10, 1), suspend=True)
    assert result.start is None and result.wake_at is None
    assert result.status.next_schedule_time is None
    assert condition(result, "Ready") == ("False", "Suspended")


def test_history_limits_delete_the_oldest_finished_runs() -> None:
    runs = tuple(
        running(f"r{minute}", phase, at(8, minute))
        for minute, phase in [
            (0, "Succeeded"),
            (10, "Failed"),
            (20, "Succeeded"),
            (30, "Cancelled"),
            (40, "Succeeded"),
            (50, "Running"),
        ]
    )
    result = plan(at(8, 55), runs=runs, last=at(8, 50), successfulRunsHistoryLimit=2)
    assert result.delete == ["r0", "r10"]
    assert result.status.active == ["r50"]


def test_time_zones_and_daylight_saving() -> None:
    berlin = "Europe/Berlin"
    # 02:30 does not exist on 2026-03-29 in Berlin: it runs at 03:00 local (01:00 UTC).
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    assert next_time("30 2 * * *", berlin, after) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    # 02:30 happens twice on 2026-10-25: it runs once.
    night = datetime(2026, 10, 24, 23, 0, tzinfo=UTC)
    morning = datetime(2026, 10, 25, 3, 0, tzinfo=UTC)
    assert missed_times("30 2 * * *", berlin, night, morning).count == 1
    # 09:00 in New York is 14:00 UTC in winter.
    ny = next_time("0 9 * * *", "America/New_York", datetime(2026, 1, 5, tzinfo=UTC))
    assert ny == datetime(2026, 1, 5, 14, 0, tzinfo=UTC)


def test_missed_times_counts_and_finds_the_latest() -> None:
    missed = missed_times("* * * * *", "UTC", at(8, 0), at(8, 3, 30))
    assert (missed.latest, missed.count, missed.too_many) == (at(8, 3), 3, False)
    assert missed_times("* * * * *", "UTC", at(8, 0), at(8, 0, 59)).latest is None
    many = missed_times("* * * * *", "UTC", at(8, 0), at(8, 0) + timedelta(hours=5))
    assert many.too_many and many.latest == at(13, 0)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("schedule", "61 * * * *", "invalid cron expression"),
        ("schedule", "0 0 * * * *", "String should match pattern"),
        ("timeZone", "Mars/Olympus", "unknown time zone"),
        ("concurrencyPolicy", "Sometimes", "concurrencyPolicy"),
        ("startingDeadlineSeconds", -1, "startingDeadlineSeconds"),
    ],
)
def test_bad_input_is_refused_naming_the_field(field: str, value: Any, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        spec(**{field: value})


def test_the_run_template_has_no_account_and_no_inline_plan() -> None:
    for extra in ({"account": "other"}, {"steps": []}):
        with pytest.raises(ValidationError):
            spec(runTemplate={"templateRef": {"name": "t"}, **extra})
    schedule = Schedule.model_validate(
        {"metadata": {"name": "s"}, "spec": spec().to_dict(), "status": {}}
    )
    assert schedule.spec.time_zone == "UTC" and schedule.spec.concurrency_policy == "Allow"


def test_a_run_the_api_server_refuses_is_missed_with_its_words_and_not_sent_again() -> None:
    """An admission policy or the schema refuses the Schedule's Run: the scheduled time counts
    as handled (the same Run would be refused again), the Schedule says why in its Missed
    condition and a Warning Event, and the next scheduled time tries again."""
    kube = FakeKube()
    kube.fail_next("create", 1, Rejected(403, "denied by the nofx-accounts policy"))
    created = datetime.now(UTC) - timedelta(minutes=15)
    body = kube.put("schedules", {
        "apiVersion": "nofx.dev/v1alpha1", "kind": "Schedule",
        "metadata": {"namespace": "team", "name": "nightly",
                     "creationTimestamp": created.isoformat()},
        "spec": spec().model_dump(by_alias=True, exclude_none=True),
    })  # fmt: skip
    reconciler = ScheduleReconciler(cast(Kube, kube), RunWatch())
    result = reconciler._reconcile(("team", "nightly"), body, ())
    status = kube.objects[("schedules", "team", "nightly")]["status"]
    missed = next(c for c in status["conditions"] if c["type"] == MISSED)
    assert (missed["status"], missed["reason"]) == ("True", "RunRejected")
    assert "denied by the nofx-accounts policy" in missed["message"]
    assert status.get("active") is None and status["lastScheduleTime"]
    assert ("nightly", "RunRejected") in kube.called("create_event")
    assert result.requeue_after is not None, "the next scheduled time is still set"
    again = kube.objects[("schedules", "team", "nightly")]
    reconciler._reconcile(("team", "nightly"), again, ())
    assert len(kube.called("create")) == 1, "the refused Run is not sent again"
