"""Schedule: a Run started on a cron schedule, with the semantics of a Kubernetes CronJob."""

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import AfterValidator, ConfigDict, Field

from nofx.api.common import (
    AGE_COLUMN,
    API_VERSION,
    ApiModel,
    Conditions,
    KindInfo,
    LocalObjectReference,
    Name,
    PrinterColumn,
    Resource,
    cel,
    validations,
)
from nofx.api.rules import ParameterValues, RunTimeout
from nofx.api.run import MAX_TTL_SECONDS

ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]
# On each Run a Schedule starts: the Schedule's name (at most 52 characters, a valid label value).
SCHEDULE_LABEL = "nofx.dev/schedule"
# A Run is named <schedule>-<unix minutes>: 52 + 1 + 10 digits fit a label value (63), like the
# 52 characters Kubernetes allows a CronJob's name.
MAX_SCHEDULE_NAME_LENGTH = 52
# Five fields of digits, names, and the characters cron syntax uses (cronsim checks the rest).
CRON_PATTERN = r"^\s*\S+(\s+\S+){4}\s*$"


def schedule_of(metadata: Mapping[str, Any]) -> str | None:
    """Name of the Schedule that started a Run: its controlling owner of kind Schedule."""
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("kind") == "Schedule" and owner.get("apiVersion") == API_VERSION:
            return str(owner["name"])
    return None


def _cron(expression: str) -> str:
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as error:
        raise ValueError(f"invalid cron expression {expression!r}: {error}") from None
    return expression


CronExpression = Annotated[
    str, Field(min_length=9, max_length=128, pattern=CRON_PATTERN), AfterValidator(_cron)
]
# An IANA zone name such as UTC, Europe/Berlin or America/Argentina/Buenos_Aires.
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
        ) from None
    return name


TimeZone = Annotated[
    str, Field(min_length=1, max_length=64, pattern=TIME_ZONE_PATTERN), AfterValidator(_time_zone)
]


class ScheduledRun(ApiModel):
    """The Run a Schedule starts each time: the Run spec fields that make sense for every
    occurrence. The operator fills in the account (the namespace's)."""

    template_ref: LocalObjectReference = Field(description="The Template to run.")
    parameters: ParameterValues | None = Field(
        default=None, description="Parameter values by name; any JSON value."
    )
    timeout: RunTimeout | None = Field(
        default=None, description="Time limit of each Run; overrides the Template's timeout."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="Delete each Run this many seconds after it finished (the history limits "
        "also delete finished Runs).",
    )


class ScheduleSpec(ApiModel):
    """When to start a Run, which Run, and what to do when the previous one still runs."""

    schedule: CronExpression = Field(
        description='Cron expression with five fields, e.g. "0 3 * * 1-5" or "*/15 * * * *".'
    )
    time_zone: TimeZone = Field(
        default="UTC", description="IANA time zone the schedule is read in, e.g. Europe/Berlin."
    )
    run_template: ScheduledRun = Field(description="The Run to start at each scheduled time.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default="Allow",
        description="While an earlier Run is active: Allow starts the new one too, Forbid "
        "starts it once the earlier one finished (if still within startingDeadlineSeconds), "
        "Replace cancels the earlier one and starts the new one.",
    )
    starting_deadline_seconds: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="A scheduled time missed by more than this many seconds (operator down, "
        "Forbid) is skipped. Unset: no deadline.",
    )
    suspend: bool = Field(default=False, description="Set to true to start no new Runs.")
    successful_runs_history_limit: int = Field(
        default=3, ge=0, le=100, description="Succeeded Runs to keep; older ones are deleted."
    )
    failed_runs_history_limit: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Failed and cancelled Runs to keep; older ones are deleted.",
    )


class ScheduleStatus(ApiModel):
    """When the Schedule last started a Run, when it starts the next, and what runs."""

    last_schedule_time: datetime | None = Field(
        default=None, description="Scheduled time of the last Run started."
    )
    next_schedule_time: datetime | None = Field(
        default=None, description="When the next Run starts; unset while suspended."
    )
    active: list[Name] | None = Field(
        default=None, max_length=1000, description="Names of the Schedule's unfinished Runs."
    )
    conditions: Conditions | None = Field(
        default=None,
        description="Ready (the schedule is valid and not suspended) and Missed (the last "
        "scheduled time was skipped, with the reason).",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed for."
    )


def _schedule_rules(schema: dict[str, Any]) -> None:
    schema.update(
        validations(
            cel(
                f"self.metadata.name.size() <= {MAX_SCHEDULE_NAME_LENGTH}",
                f"a Schedule's name has at most {MAX_SCHEDULE_NAME_LENGTH} characters "
                "(its Runs are named after it and the scheduled time)",
            )
        )
    )


class Schedule(Resource):
    """A Schedule starts a Run of a Template at the times of a cron expression, like a
    Kubernetes CronJob starts Jobs."""

    model_config = ConfigDict(json_schema_extra=_schedule_rules)

    kind_info: ClassVar[KindInfo] = KindInfo(
        plural="schedules",
        short_names=("nxs",),
        printer_columns=(
            PrinterColumn("Schedule", ".spec.schedule", "Cron expression."),
            PrinterColumn("Suspend", ".spec.suspend", "Whether new Runs are held back.", "boolean"),
            PrinterColumn(
                "Last", ".status.lastScheduleTime", "Scheduled time of the last Run.", "date"
            ),
            PrinterColumn("Next", ".status.nextScheduleTime", "When the next Run starts."),
            AGE_COLUMN,
        ),
    )

    kind: Literal["Schedule"] = Field(
        default="Schedule", description="Kind is the type of this object: Schedule."
    )
    spec: ScheduleSpec = Field(description="When to start which Run.")
    status: ScheduleStatus | None = Field(default=None, description="What the Schedule did.")
