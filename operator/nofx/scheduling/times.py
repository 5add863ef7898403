"""Scheduled times of a cron expression in a time zone (cronsim reads the expression; a time
skipped by a daylight-saving change runs at the first minute after it, a repeated one once)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice, takewhile
from zoneinfo import ZoneInfo

from cronsim import CronSim

# Like a CronJob: past this many missed times the Schedule warns (clock skew, long downtime).
MAX_MISSED = 100


@dataclass(frozen=True)
class Missed:
    """The scheduled times in (since, now]: the most recent one, and how many there were
    (counted up to MAX_MISSED + 1)."""

    latest: datetime | None
    count: int

    @property
    def too_many(self) -> bool:
        return self.count > MAX_MISSED


def _local(when: datetime, zone: str) -> datetime:
    return when.astimezone(ZoneInfo(zone))


def next_time(expression: str, zone: str, after: datetime) -> datetime:
    """The first scheduled time strictly after `after`, in UTC."""
    return next(iter(CronSim(expression, _local(after, zone)))).astimezone(UTC)


def missed_times(expression: str, zone: str, since: datetime, now: datetime) -> Missed:
    """Scheduled times after since and at or before now."""
    upcoming = CronSim(expression, _local(since, zone))
    times = list(islice(takewhile(lambda t: t <= now, upcoming), MAX_MISSED + 1))
    if not times:
        return Missed(None, 0)
    if len(times) <= MAX_MISSED:
        return Missed(times[-1].astimezone(UTC), len(times))
    # Too many to walk: step back from the minute after now to the most recent one.
    start = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    latest = next(t for t in CronSim(expression, _local(start, zone), reverse=True) if t <= now)
    return Missed(latest.astimezone(UTC), len(times))
