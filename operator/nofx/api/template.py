"""Template: a reusable multi-step plan with parameters. Steps form a DAG through dependsOn; the
same Step type is used by inline plans of Runs."""

from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from nofx.api.common import (
    AGE_COLUMN,
    LIST_SET,
    MAX_DEPENDENCIES,
    MAX_FINALLY_STEPS,
    MAX_PARAMETERS,
    MAX_STEPS,
    READY_COLUMN,
    ApiModel,
    Conditions,
    Currency,
    DecimalString,
    Identifier,
    KindInfo,
    LocalObjectReference,
    PrinterColumn,
    QueueName,
    Resource,
    ShortText,
    SpecHash,
    StepName,
    TemplatedString,
    cel,
    list_map,
    validations,
)
from nofx.api.rules import (
    IDENTIFIER_KEYS,
    ParameterValue,
    RunTimeout,
    StepTimeout,
)
from nofx.api.step_options import (
    AgentSelector,
    ApprovalGate,
    ChildRun,
    Retries,
    StepCache,
    WhenExpression,
)

ParameterType = Literal["string", "integer", "number", "boolean", "array", "object"]


def json_type(value: Any) -> ParameterType:
    """The parameter type a JSON value has (an integral number is an integer)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string"


class Parameter(ApiModel):
    """A declared parameter: `{{ params.NAME }}` in step inputs reads its value."""

    name: Identifier = Field(description="Name of the parameter.")
    description: ShortText | None = Field(default=None, description="What the parameter means.")
    type: ParameterType = Field(default="string", description="JSON type the value must have.")
    default: ParameterValue = Field(
        default=None, description="Value used when a Run does not set the parameter."
    )
    required: bool = Field(default=False, description="Whether every Run must set the parameter.")
    enum: list[ParameterValue] | None = Field(
        default=None, max_length=64, description="If set, the value must be one of these."
    )
    secret: bool = Field(
        default=False,
        description="Evidence bundles carry only the value's hash. The value is still in the "
        "Run's spec and status: real credentials belong in Secrets an Agent names.",
    )


Inputs = Annotated[dict[str, TemplatedString], Field(max_length=32), IDENTIFIER_KEYS]


class Step(ApiModel):
    """One unit of work: a Job running an Agent, or a child Run."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "(has(self.agentRef) ? 1 : 0) + (has(self.agentSelector) ? 1 : 0)"
                " + (has(self.childRun) ? 1 : 0) == 1",
                "set exactly one of agentRef, agentSelector or childRun",
            ),
            cel(
                "!has(self.dependsOn) || !(self.name in self.dependsOn)",
                "a step cannot depend on itself",
                ".dependsOn",
            ),
            cel(
                "!has(self.maxParallel) || has(self.forEach)",
                "maxParallel applies only to a step with forEach",
                ".maxParallel",
            ),
            cel(
                "!has(self.cache) || (!has(self.childRun) && !has(self.forEach))",
                "cache applies only to a step that runs an Agent, without forEach",
                ".cache",
            ),
        )
    )

    name: StepName = Field(
        description="Name of the step, unique in the plan; a DNS label of at most 40 characters."
    )
    description: ShortText | None = Field(default=None, description="What the step does.")
    agent_ref: LocalObjectReference | None = Field(
        default=None, description="The Agent that runs the step."
    )
    agent_selector: AgentSelector | None = Field(
        default=None, description="Choose the Agent by its skills instead of by name."
    )
    child_run: ChildRun | None = Field(
        default=None, description="Run another Template as a child Run instead of a Job."
    )
    inputs: Inputs | None = Field(
        default=None,
        description="Inputs passed to the step; values may reference {{ params.NAME }}, "
        "{{ steps.STEP.outputs.KEY }} of upstream steps, and {{ item }} / {{ index }}.",
    )
    depends_on: list[StepName] | None = Field(
        default=None,
        max_length=MAX_DEPENDENCIES,
        json_schema_extra=LIST_SET,
        description="Steps that must succeed before this one starts.",
    )
    when: list[WhenExpression] | None = Field(
        default=None, max_length=16, description="The step is skipped unless all of these match."
    )
    for_each: TemplatedString | None = Field(
        default=None,
        description="Run the step once per item of this JSON array (e.g. {{ params.repos }}); "
        "each run sees {{ item }} and {{ index }}. Downstream steps wait for all items.",
    )
    max_parallel: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="Most forEach items that run at once."
    )
    retries: Retries | None = Field(default=None, description="Retries of a failed attempt.")
    timeout: StepTimeout | None = Field(
        default=None, description='Time limit of each attempt, e.g. "10m"; at most 168h (7 days).'
    )
    approval: ApprovalGate | None = Field(
        default=None, description="Wait for a person's approval before the step starts."
    )
    cache: StepCache | None = Field(
        default=None,
        description="Reuse the outputs of an earlier successful attempt with the same Agent "
        "and inputs (in this namespace and account) instead of running a Job.",
    )


# Steps are unique by name, and dependsOn entries name steps of the same list.
STEP_LIST = list_map("name") | validations(
    cel(
        "self.all(s, !has(s.dependsOn) || s.dependsOn.all(d, d in self.map(t, t.name)))",
        "every dependsOn entry must name a step of the same list",
    )
)
Steps = Annotated[list[Step], Field(max_length=MAX_STEPS, json_schema_extra=STEP_LIST)]
FinallySteps = Annotated[
    list[Step], Field(max_length=MAX_FINALLY_STEPS, json_schema_extra=STEP_LIST)
]

# Step names are unique across steps and finally: status and Job names use them.
FINALLY_NAMES_ARE_NEW = cel(
    "!has(self.steps) || !has(self.finally)"
    " || self.finally.all(f, !self.steps.exists(s, s.name == f.name))",
    "finally step names must differ from the names in steps",
    ".finally",
)


class Output(ApiModel):
    """A result of the whole plan, computed from step outputs when it finishes."""

    name: Identifier = Field(description="Name of the output.")
    value: TemplatedString = Field(
        description="Value; typically {{ steps.STEP.outputs.KEY }} or a string containing it."
    )
    description: ShortText | None = Field(default=None, description="What the output means.")


Parameters = Annotated[
    list[Parameter], Field(max_length=MAX_PARAMETERS, json_schema_extra=list_map("name"))
]
Outputs = Annotated[list[Output], Field(max_length=32, json_schema_extra=list_map("name"))]


class Budget(ApiModel):
    """The most a Run may cost. Once its recorded cost (wall time and tokens of finished step
    attempts) passes maxCost, nothing new starts, running steps are stopped and the Run fails
    with reason BudgetExceeded."""

    max_cost: DecimalString = Field(description='Most the Run may cost, e.g. "5.00".')
    currency: Currency | None = Field(
        default=None,
        description="ISO 4217 currency of maxCost; the currency of the Run's Agents if unset. "
        "A Run whose priced Agents charge in another currency, or in several, does not start.",
    )


class TemplateSpec(ApiModel):
    """A multi-step plan: parameters, steps, cleanup steps and outputs."""

    model_config = ConfigDict(json_schema_extra=validations(FINALLY_NAMES_ARE_NEW))

    description: ShortText | None = Field(default=None, description="What the plan does.")
    parameters: Parameters | None = Field(
        default=None, description="Parameters a Run sets, read as {{ params.NAME }}."
    )
    steps: Steps = Field(min_length=1, description="The steps; dependsOn orders them as a DAG.")
    finally_: FinallySteps | None = Field(
        default=None,
        alias="finally",
        description="Cleanup steps that always run after the main steps, whatever their outcome.",
    )
    timeout: RunTimeout | None = Field(
        default=None, description='Time limit of a whole Run, e.g. "1h"; at most 720h (30 days).'
    )
    outputs: Outputs | None = Field(default=None, description="Results of the plan.")
    queue_name: QueueName | None = Field(
        default=None,
        description="Kueue LocalQueue (in the Run's namespace) that admits the step Jobs of "
        "this Template's Runs, unless a Run names its own.",
    )
    budget: Budget | None = Field(
        default=None, description="Most a Run of this plan may cost; a Run's budget overrides it."
    )


class TemplateStatus(ApiModel):
    """What the operator observed about the template."""

    conditions: Conditions | None = Field(
        default=None,
        description="Conditions of the template; Ready is False with reason AgentMissing "
        "when a step refers to an Agent that does not exist.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed for."
    )
    spec_hash: SpecHash | None = Field(
        default=None, description="SHA-256 of the canonical JSON of the spec, as Runs pin it."
    )
    step_count: int | None = Field(
        default=None, ge=0, description="Number of steps including finally steps, for kubectl get."
    )


class Template(Resource):
    """A Template is a reusable multi-step plan with parameters: which agent does each step and
    what each step depends on. Runs execute it."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        plural="templates",
        short_names=("nxt",),
        printer_columns=(
            PrinterColumn(
                "Steps", ".status.stepCount", "Number of steps including finally.", "integer"
            ),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    kind: Literal["Template"] = Field(
        default="Template", description="Kind is the type of this object: Template."
    )
    spec: TemplateSpec = Field(description="The plan.")
    status: TemplateStatus | None = Field(
        default=None, description="What the operator observed about the template."
    )
