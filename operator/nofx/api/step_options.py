"""The parts of a Template step beyond its Agent and inputs: choosing an Agent by skills, a child
Run, retries and their backoff, an approval gate, when-guards and the step cache."""

from typing import Literal

from pydantic import Field

from nofx.api.common import (
    LIST_SET,
    ApiModel,
    LocalObjectReference,
    ShortText,
    Tag,
    TemplatedString,
)
from nofx.api.rules import (
    CacheTtl,
    MaxRetryDelay,
    ParameterValues,
    RetryDelay,
)

ParameterType = Literal["string", "integer", "number", "boolean", "array", "object"]


class AgentSelector(ApiModel):
    """Chooses an Agent by what it can do instead of by name."""

    skills: list[Tag] = Field(
        min_length=1,
        max_length=16,
        json_schema_extra=LIST_SET,
        description="Skills the Agent must all have.",
    )


class ChildRun(ApiModel):
    """Runs another Template as a child Run and waits for it (hierarchical agents); the child
    Run's outputs become the step's outputs."""

    template_ref: LocalObjectReference = Field(description="The Template the child Run executes.")
    parameters: ParameterValues | None = Field(
        default=None,
        description="Parameters of the child Run; string values may contain {{ ... }} expressions.",
    )


class Backoff(ApiModel):
    """Delay between attempts: duration, then multiplied by factor each time, up to maxDuration."""

    duration: RetryDelay = Field(
        default="10s", description="Delay before the first retry; at most 1h."
    )
    factor: int = Field(
        default=2, ge=1, le=10, description="Multiplier applied to the delay per retry."
    )
    max_duration: MaxRetryDelay = Field(
        default="5m", description="Upper bound of the delay; at most 24h."
    )


class Retries(ApiModel):
    """How often a failed step is tried again."""

    limit: int = Field(ge=0, le=10, description="Retries after the first attempt (0 to 10).")
    backoff: Backoff = Field(
        default_factory=lambda: Backoff(),
        json_schema_extra={"default": {}},
        description="Delay between attempts.",
    )


class ApprovalGate(ApiModel):
    """Pauses the Run before the step until a person approves it in the Run's spec.approvals."""

    required: bool = Field(default=True, description="Whether the step waits for an approval.")
    message: ShortText | None = Field(default=None, description="What the approver should check.")


class WhenExpression(ApiModel):
    """A guard: the step runs only if the rendered input is (In) or is not (NotIn) one of values."""

    input: TemplatedString = Field(description="Value to test; may contain {{ ... }} expressions.")
    operator: Literal["In", "NotIn"] = Field(description="In or NotIn.")
    values: list[ShortText] = Field(
        min_length=1, max_length=32, description="Values the input is compared with."
    )


class StepCache(ApiModel):
    """Reuse the outputs of an earlier successful attempt instead of running a Job: one with the
    same cache key (the pinned Agent's spec and image, the rendered inputs, key, the namespace and
    the account) that succeeded less than ttl ago. Needs the operator's Postgres mirror."""

    ttl: CacheTtl = Field(
        description='How old a reused result may be, e.g. "1h"; at most 720h (30 days).'
    )
    key: ShortText | None = Field(
        default=None,
        description="Extra text mixed into the cache key, e.g. a version of what the step "
        "reads from outside its inputs; change it to stop reusing older results.",
    )
