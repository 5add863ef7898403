"""Run: one execution of a Template, or of an inline plan, with its parameters."""

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from nofx.api.common import (
    AGE_COLUMN,
    CONDITION_REASON,
    MAX_FINALLY_STEPS,
    MAX_STEPS,
    ApiModel,
    Conditions,
    KindInfo,
    LocalObjectReference,
    Name,
    PrinterColumn,
    QueueName,
    Resource,
    ShortText,
    StepName,
    Tag,
    Text,
    cel,
    list_map,
    validations,
)
from nofx.api.pinned import Pinned
from nofx.api.rules import ParameterValues, RunTimeout
from nofx.api.template import (
    FINALLY_NAMES_ARE_NEW,
    Budget,
    FinallySteps,
    Outputs,
    Parameter,
    Parameters,
    Steps,
    TemplateSpec,
    json_type,
)
from nofx.api.usage import Usage

RunPhase = Literal[
    "Pending", "Queued", "Running", "WaitingApproval", "Succeeded", "Failed", "Cancelled"
]
StepPhase = Literal[
    "Pending", "Waiting", "Queued", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"
]
# A step attempt whose Job exists: Queued while Kueue has not admitted it, then Running.
STARTED_STEP_PHASES = frozenset({"Queued", "Running"})
TERMINAL_RUN_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
TERMINAL_STEP_PHASES = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})

# The only spec fields a person may change after creation; everything else is fixed so that a
# Run always means what it meant when it started.
MUTABLE_SPEC_FIELDS = ("cancel", "suspend", "approvals")
MAX_TTL_SECONDS = 365 * 24 * 3600


class Approval(ApiModel):
    """A person's approval of a step that has an approval gate."""

    step: StepName = Field(description="Name of the approved step.")
    approved_by: str = Field(
        min_length=1, max_length=253, description="Who approved, e.g. an email address."
    )
    message: ShortText | None = Field(default=None, description="Why, or under which conditions.")


def _run_spec_rules(schema: dict[str, Any]) -> None:
    """Adds the CEL rules of RunSpec; the immutability rule lists every property of the
    generated schema except the mutable ones, so a new field is immutable by default."""
    immutable = [name for name in schema["properties"] if name not in MUTABLE_SPEC_FIELDS]
    schema.update(
        validations(
            cel(
                "has(self.templateRef) != has(self.steps)",
                "set exactly one of templateRef or steps",
            ),
            cel(
                "!has(self.templateRef) || !(has(self.finally)"
                " || has(self.parameterDefinitions) || has(self.outputs))",
                "finally, parameterDefinitions and outputs belong to an inline plan: "
                "set them with steps, not with templateRef",
            ),
            FINALLY_NAMES_ARE_NEW,
            cel(
                " && ".join(
                    f"has(self.{name}) == has(oldSelf.{name})"
                    f" && (!has(self.{name}) || self.{name} == oldSelf.{name})"
                    for name in immutable
                ),
                "spec is immutable once the Run is created, except cancel, suspend and approvals",
            ),
            cel(
                "!has(oldSelf.approvals) || (has(self.approvals)"
                " && oldSelf.approvals.all(a, self.approvals.exists(b, b == a)))",
                "approvals can be added but not changed or removed",
                ".approvals",
            ),
            cel(
                "!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)",
                "a cancelled Run cannot be resumed",
                ".cancel",
            ),
        )
    )


class RunSpec(ApiModel):
    """What to run (a Template or an inline plan), with which parameters, and the controls a
    person uses while it runs (cancel, suspend, approvals)."""

    model_config = ConfigDict(json_schema_extra=_run_spec_rules)

    template_ref: LocalObjectReference | None = Field(
        default=None, description="The Template to run. Set this or steps."
    )
    parameters: ParameterValues | None = Field(
        default=None,
        description="Parameter values by name; any JSON value.",
    )
    parameter_definitions: Parameters | None = Field(
        default=None,
        description="Inline plan only: declared parameters, like a Template's parameters. "
        "If unset, every key of parameters is declared with the type of its value.",
    )
    steps: Steps | None = Field(
        default=None, min_length=1, description="Inline plan: the steps. Set this or templateRef."
    )
    finally_: FinallySteps | None = Field(
        default=None,
        alias="finally",
        description="Inline plan only: cleanup steps that always run.",
    )
    outputs: Outputs | None = Field(
        default=None, description="Inline plan only: results of the plan."
    )
    timeout: RunTimeout | None = Field(
        default=None,
        description="Time limit of the whole Run; overrides the Template's timeout. At most 720h.",
    )
    budget: Budget | None = Field(
        default=None,
        description="Most the Run may cost; overrides the Template's budget. Once its recorded "
        "cost passes maxCost, it fails with reason BudgetExceeded.",
    )
    cancel: bool = Field(
        default=False, description="Set to true to cancel the Run: running steps are stopped."
    )
    suspend: bool = Field(
        default=False, description="Set to true to start no new steps until it is false again."
    )
    approvals: list[Approval] | None = Field(
        default=None,
        max_length=MAX_STEPS + MAX_FINALLY_STEPS,
        json_schema_extra=list_map("step"),
        description="Approvals of gated steps; append one to let a waiting step start.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TTL_SECONDS,
        description="Delete the Run this many seconds after it finished; at most a year.",
    )
    account: Tag | None = Field(
        default=None,
        description="Billing account; it must be the namespace's account (its label "
        "nofx.dev/account, else the namespace's name), which is also the default. The Run is "
        "charged to status.account.",
    )
    queue_name: QueueName | None = Field(
        default=None,
        description="Kueue LocalQueue in the Run's namespace that admits its step Jobs; "
        "default: the Template's queueName, then the namespace's label nofx.dev/queue-name. "
        "Unset everywhere: the steps are not queued. The result is status.queueName.",
    )

    def inline_template(self) -> TemplateSpec | None:
        """The inline plan as a TemplateSpec, or None when the Run refers to a Template."""
        if self.steps is None:
            return None
        parameters = self.parameter_definitions
        if parameters is None:
            parameters = [
                Parameter(name=name, type=json_type(value))
                for name, value in (self.parameters or {}).items()
            ]
        return TemplateSpec.model_validate(
            {
                "parameters": parameters or None,
                "steps": self.steps,
                "finally": self.finally_,
                "timeout": self.timeout,
                "outputs": self.outputs,
                "budget": self.budget,
            }
        )


class StepStatus(ApiModel):
    """State of one step, or of one item of a forEach step."""

    name: StepName = Field(description="Name of the step.")
    phase: StepPhase = Field(
        description="Pending, Waiting (for approval or retry backoff), Queued (its Job waits "
        "for Kueue's admission), Running, Succeeded, Failed, Skipped or Cancelled."
    )
    reason: str | None = Field(
        default=None,
        max_length=64,
        pattern=CONDITION_REASON,
        description="Why a step failed in a way a tool can match on, e.g. JobRejected.",
    )
    attempts: int | None = Field(default=None, ge=0, description="Attempts started so far.")
    job_name: Name | None = Field(default=None, description="Job of the current or last attempt.")
    started_at: datetime | None = Field(default=None, description="When the first attempt started.")
    finished_at: datetime | None = Field(default=None, description="When the step finished.")
    next_attempt_at: datetime | None = Field(
        default=None, description="When the next attempt starts, while waiting for a retry."
    )
    outputs: dict[str, Any] | None = Field(
        default=None, max_length=32, description="Small JSON results the step reported."
    )
    message: Text | None = Field(default=None, description="Why the step is in this phase.")
    item: Any = Field(default=None, description="forEach only: the item this entry runs.")
    index: int | None = Field(default=None, ge=0, description="forEach only: the index of item.")
    child_run_name: Name | None = Field(
        default=None, description="childRun only: name of the child Run."
    )


class AuditOutbox(ApiModel):
    """Audit events and usage records not yet stored in Postgres. They are written here in the
    same update as the change they describe, so none is lost if the operator dies or Postgres is
    down; the mirror removes them once Postgres has them."""

    next_seq: int = Field(1, ge=1, description="Sequence number of the Run's next audit event.")
    pending: list[Annotated[dict[str, Any], Field(max_length=32)]] | None = Field(
        None,
        max_length=5000,
        description="Events and usage records waiting to be mirrored to Postgres.",
    )


class RunStatus(ApiModel):
    """What happened so far."""

    phase: RunPhase | None = Field(
        default=None,
        description="Pending, Queued (steps wait for Kueue, none runs), Running, "
        "WaitingApproval, Succeeded, Failed or Cancelled.",
    )
    conditions: Conditions | None = Field(
        default=None,
        description="Conditions of the Run: Succeeded (True, False, or Unknown while running) "
        "and Ready.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed for."
    )
    started_at: datetime | None = Field(default=None, description="When the Run started.")
    finished_at: datetime | None = Field(default=None, description="When the Run finished.")
    progress: str | None = Field(
        default=None, max_length=16, description='Finished steps of all steps, e.g. "2/5".'
    )
    pinned: Pinned | None = Field(
        default=None, description="Template and Agent specs pinned when the Run started."
    )
    steps: list[StepStatus] | None = Field(
        default=None, max_length=1000, description="State of each step, and of each forEach item."
    )
    account: Tag | None = Field(
        default=None,
        description="Billing account charged for the Run's usage: its namespace's account, "
        "pinned when the operator first saw the Run (relabelling the namespace later changes "
        "nothing).",
    )
    queue_name: QueueName | None = Field(
        default=None,
        description="Kueue LocalQueue of the Run's step Jobs, resolved when the Run started "
        "(spec, Template, namespace label); unset: not queued.",
    )
    usage: Usage | None = Field(default=None, description="Metered usage for billing.")
    outputs: dict[str, Any] | None = Field(
        default=None, max_length=32, description="Results of the plan, once it finished."
    )
    message: Text | None = Field(
        default=None, description="Summary of the state, e.g. why it failed."
    )
    audit: AuditOutbox | None = Field(
        default=None,
        description="What the Postgres mirror has not stored yet (only with a mirror).",
    )


class Run(Resource):
    """A Run is one execution of a Template, or of an inline plan, with its parameters. Each
    step attempt becomes a Kubernetes Job."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        plural="runs",
        short_names=("nxr",),
        printer_columns=(
            PrinterColumn("Phase", ".status.phase", "Phase of the Run."),
            PrinterColumn("Progress", ".status.progress", "Finished steps of all steps."),
            PrinterColumn("Template", ".spec.templateRef.name", "Template the Run executes."),
            PrinterColumn("Account", ".status.account", "Account the Run is billed to."),
            PrinterColumn("Queue", ".status.queueName", "Kueue LocalQueue of its step Jobs."),
            AGE_COLUMN,
        ),
        selectable_fields=(".spec.templateRef.name", ".status.phase"),
    )

    kind: Literal["Run"] = Field(default="Run", description="Kind is the type of this object: Run.")
    spec: RunSpec = Field(description="What to run and how.")
    status: RunStatus | None = Field(default=None, description="What happened so far.")
