"""What a Run pins when it starts (status.pinned): its Template's and Agents' specs and its
parameters, so that editing a Template or Agent never changes a Run in flight."""

from typing import Any

from pydantic import Field

from nofx.api.common import MAX_PARAMETERS, MAX_STEPS, ApiModel, SpecHash


class PinnedTemplate(ApiModel):
    """The template spec a Run executes, copied when it started."""

    name: str | None = Field(
        default=None, max_length=253, description="Name of the Template; unset for an inline plan."
    )
    spec_hash: SpecHash = Field(description="SHA-256 of the canonical JSON of spec.")
    spec: dict[str, Any] = Field(
        max_length=64, description="The TemplateSpec as it was when the Run started."
    )


class PinnedAgent(ApiModel):
    """An agent spec a Run uses, copied when it started."""

    spec_hash: SpecHash = Field(description="SHA-256 of the canonical JSON of spec.")
    spec: dict[str, Any] = Field(
        max_length=64, description="The AgentSpec as it was when the Run started."
    )


class Pinned(ApiModel):
    """Snapshot taken when the Run started, so editing a Template or Agent never changes a Run
    in flight."""

    template: PinnedTemplate | None = Field(
        default=None, description="The template spec the Run executes."
    )
    agents: dict[str, PinnedAgent] | None = Field(
        default=None, max_length=MAX_STEPS, description="Agent specs by Agent name."
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        max_length=MAX_PARAMETERS,
        description="Parameter values after defaults were applied.",
    )
