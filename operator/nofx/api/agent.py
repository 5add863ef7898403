"""Agent: a container image that does one kind of work, with the model, tools, prompts and
resources it needs."""

from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field

from nofx.api.common import (
    AGE_COLUMN,
    LIST_SET,
    MAX_SHORT_TEXT_LENGTH,
    READY_COLUMN,
    ApiModel,
    Conditions,
    KeySelector,
    KindInfo,
    LocalObjectReference,
    Name,
    PrinterColumn,
    Quantity,
    Resource,
    ShortText,
    SpecHash,
    Tag,
    Text,
    cel,
    list_map,
    validations,
)
from nofx.api.pricing import Pricing
from nofx.api.rules import (
    NO_RESERVED_LABELS,
    QUALIFIED_NAME_KEYS,
    request_within_limit,
)

# Kubernetes' rule for environment variable names: not "." and not starting with "..".
ENV_VAR_NAME = r"^([-_a-zA-Z]|\.[-_a-zA-Z0-9])[-._a-zA-Z0-9]*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# An image reference as container runtimes parse it: [host[:port]/]path[:tag][@digest].
_PATH_COMPONENT = r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*"
IMAGE = (
    r"^([a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*"
    rf"(:[0-9]+)?/)?{_PATH_COMPONENT}(/{_PATH_COMPONENT})*"
    r"(:[A-Za-z0-9_][-.A-Za-z0-9_]{0,127})?"
    r"(@[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
# Kubernetes allows 256 KiB of annotations in all: 32 of at most 4 KiB stay well below.
MAX_POD_ANNOTATIONS = 32

Argument = Annotated[str, Field(max_length=MAX_SHORT_TEXT_LENGTH)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
PodLabels = Annotated[
    dict[str, LabelValue], Field(max_length=64), QUALIFIED_NAME_KEYS, NO_RESERVED_LABELS
]
PodAnnotations = Annotated[
    dict[str, Text], Field(max_length=MAX_POD_ANNOTATIONS), QUALIFIED_NAME_KEYS
]


class ModelConfig(ApiModel):
    """The language model an agent uses."""

    provider: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="Model provider, e.g. anthropic or openai.",
    )
    name: str = Field(
        min_length=1, max_length=253, description="Model name as the provider spells it."
    )
    credentials_secret_ref: KeySelector | None = Field(
        default=None,
        description="Secret key holding the provider credentials. Only the reference is stored; "
        "the value reaches the step's container as an environment variable and nowhere else.",
    )


class Prompts(ApiModel):
    """The system prompt of an agent, inline or from a ConfigMap."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.system) && has(self.configMapRef))",
                "set either system or configMapRef, not both",
            )
        )
    )

    system: str | None = Field(default=None, max_length=32768, description="Inline system prompt.")
    config_map_ref: KeySelector | None = Field(
        default=None, description="ConfigMap key holding the system prompt."
    )


class EnvVarSource(ApiModel):
    """Where an environment variable's value comes from."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                "set exactly one of secretKeyRef or configMapKeyRef",
            )
        )
    )

    secret_key_ref: KeySelector | None = Field(default=None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(
        default=None, description="A key of a ConfigMap."
    )


class EnvVar(ApiModel):
    """An environment variable of the agent's container."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.value) && has(self.valueFrom))",
                "set either value or valueFrom, not both",
            )
        )
    )

    name: str = Field(
        min_length=1, max_length=128, pattern=ENV_VAR_NAME, description="Variable name."
    )
    value: Text | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Take the value from a Secret or ConfigMap key."
    )


class EnvFromSource(ApiModel):
    """A Secret or ConfigMap whose keys all become environment variables."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.secretRef) != has(self.configMapRef)",
                "set exactly one of secretRef or configMapRef",
            )
        )
    )

    secret_ref: LocalObjectReference | None = Field(default=None, description="A Secret.")
    config_map_ref: LocalObjectReference | None = Field(default=None, description="A ConfigMap.")


class ResourceList(ApiModel):
    """CPU and memory quantities."""

    cpu: Quantity | None = Field(default=None, description='CPU, e.g. "500m" or "2".')
    memory: Quantity | None = Field(default=None, description='Memory, e.g. "512Mi" or "2Gi".')


class Resources(ApiModel):
    """Compute resources of each step's container; a request may not exceed its limit."""

    requests: ResourceList | None = Field(
        default=None, description="Resources the scheduler reserves."
    )
    limits: ResourceList | None = Field(
        default=None, description="Resources the container may not exceed."
    )


class AgentSpec(ApiModel):
    """What the agent runs and what it needs."""

    image: str = Field(
        min_length=1,
        max_length=512,
        pattern=IMAGE,
        description="Container image that performs the agent's work.",
    )
    command: list[Argument] | None = Field(
        default=None,
        max_length=32,
        description="Entrypoint of the container; the image's if unset.",
    )
    args: list[Argument] | None = Field(
        default=None, max_length=64, description="Arguments to the entrypoint."
    )
    description: ShortText | None = Field(default=None, description="What this agent is for.")
    skills: list[Tag] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=LIST_SET,
        description="Kinds of work this agent does; steps with an agentSelector match on them.",
    )
    tools: list[Tag] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=LIST_SET,
        description="Tools the agent is allowed to use.",
    )
    model: ModelConfig | None = Field(
        default=None, description="The language model the agent uses."
    )
    prompts: Prompts | None = Field(default=None, description="The agent's system prompt.")
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=list_map("name"),
        description="Environment variables of the agent's container.",
    )
    env_from: list[EnvFromSource] | None = Field(
        default=None,
        max_length=16,
        description="Secrets and ConfigMaps whose keys become environment variables. Every "
        "Secret an Agent names must be allowed by its namespace (annotation "
        "nofx.dev/agent-secrets) when the nofx-agent-access policy is on.",
    )
    resources: (
        Annotated[Resources, request_within_limit("cpu"), request_within_limit("memory")] | None
    ) = Field(default=None, description="Compute resources of each step's container.")
    service_account_name: Name | None = Field(
        default=None,
        description="ServiceAccount the step Pods run as; the namespace must allow it (its "
        "annotation nofx.dev/agent-service-accounts) when the nofx-agent-access policy is on.",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the ServiceAccount's API token into step Pods; off by default, so a "
        "step reaches the Kubernetes API only when its Agent asks.",
    )
    pod_annotations: PodAnnotations | None = Field(
        default=None, description="Annotations added to each step Pod."
    )
    pod_labels: PodLabels | None = Field(
        default=None,
        description="Labels added to each step Pod; the keys the Job controller and the "
        "operator set (nofx.dev/..., batch.kubernetes.io/..., job-name, controller-uid, "
        "app.kubernetes.io/managed-by) are reserved.",
    )
    max_concurrent_steps: int | None = Field(
        default=None,
        ge=1,
        description="Most steps of all Runs that may use this agent at once; unlimited if unset.",
    )
    pricing: Pricing | None = Field(
        default=None, description="Price used to meter usage for billing."
    )


class AgentStatus(ApiModel):
    """What the operator observed about the agent."""

    conditions: Conditions | None = Field(
        default=None, description="Conditions of the agent; Ready is True when it can be used."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the status was computed for."
    )
    spec_hash: SpecHash | None = Field(
        default=None, description="SHA-256 of the canonical JSON of the spec, as Runs pin it."
    )


class Agent(Resource):
    """An Agent is a container image that does one kind of work (plan, write code, review,
    open a pull request), with the model, tools, prompts and resources it needs."""

    kind_info: ClassVar[KindInfo] = KindInfo(
        plural="agents",
        short_names=("nxa",),
        printer_columns=(
            PrinterColumn("Image", ".spec.image", "Container image of the agent."),
            READY_COLUMN,
            AGE_COLUMN,
        ),
    )

    kind: Literal["Agent"] = Field(
        default="Agent", description="Kind is the type of this object: Agent."
    )
    spec: AgentSpec = Field(description="What the agent runs and what it needs.")
    status: AgentStatus | None = Field(
        default=None, description="What the operator observed about the agent."
    )
