"""What an Agent's work costs: per hour of wall time, and per million tokens of each model."""

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from nofx.api.common import (
    ApiModel,
    Currency,
    DecimalString,
    cel,
    list_map,
    validations,
)

MAX_PRICED_MODELS = 32
# A model name as providers spell them ("claude-sonnet-4", "gpt-4.1-mini", "models/gemini-2.5"):
# no spaces, so that it reads as one word in `nofx usage` and as a Prometheus label value.
MODEL_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.:/@]*[A-Za-z0-9])?$"
ModelName = Annotated[str, Field(min_length=1, max_length=253, pattern=MODEL_NAME)]


class ModelPrice(ApiModel):
    """What one model's tokens cost, per million tokens, in the Agent's currency."""

    model: ModelName = Field(
        description="Model name exactly as steps report it in their nofx.usage output."
    )
    input_per_million: DecimalString = Field(
        description='Price of one million input tokens (not counting cached ones), e.g. "3".'
    )
    output_per_million: DecimalString = Field(
        description='Price of one million output tokens, e.g. "15".'
    )
    cached_per_million: DecimalString | None = Field(
        default=None,
        description="Price of one million cached input tokens (reported apart from "
        "inputTokens); the input price if unset.",
    )


class Pricing(ApiModel):
    """What running this agent costs, in one currency: wall seconds x perHour / 3600 for every
    step attempt, plus the tokens its steps report (nofx.usage) at the prices of models."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.perHour) || has(self.models)", "set perHour, models or both")
        )
    )

    currency: Currency = Field(default="USD", description="ISO 4217 currency code.")
    per_hour: DecimalString | None = Field(
        default=None,
        description='Price of one hour of a step\'s wall time, as a decimal string, e.g. "0.90".',
    )
    models: list[ModelPrice] | None = Field(
        default=None,
        max_length=MAX_PRICED_MODELS,
        json_schema_extra=list_map("model"),
        description="Token prices per model. A step that reports tokens of a model not listed "
        "here fails with reason UnpricedModel (an Agent without models meters tokens at no "
        "cost).",
    )

    @model_validator(mode="after")
    def _priced(self) -> "Pricing":
        if self.per_hour is None and self.models is None:
            raise ValueError("set perHour, models or both")
        return self
