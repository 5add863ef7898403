"""A Run's metered usage (status.usage): wall time, tokens per model and cost per currency."""

from pydantic import Field

from nofx.api.common import MAX_STEPS, ApiModel, Currency, DecimalString, list_map

MAX_USAGE_MODELS = 32


class CurrencyCost(ApiModel):
    """What a Run cost in one currency."""

    currency: Currency = Field(description="ISO 4217 currency code.")
    cost: DecimalString = Field(description="Wall time and token cost in this currency.")


class ModelTokens(ApiModel):
    """Tokens of one model that a Run's steps reported, and what they cost."""

    model: str = Field(min_length=1, max_length=253, description="Model name as reported.")
    input_tokens: int = Field(default=0, ge=0, description="Input tokens, cached ones apart.")
    output_tokens: int = Field(default=0, ge=0, description="Output tokens.")
    cached_tokens: int = Field(default=0, ge=0, description="Cached input tokens.")
    cost: DecimalString = Field(default="0", description="Their cost at the Agents' prices.")
    currency: Currency = Field(default="USD", description="ISO 4217 currency code of cost.")


class Usage(ApiModel):
    """Metered usage: wall time of the Run's steps, the tokens they reported, and the cost."""

    wall_seconds: float = Field(
        default=0, ge=0, description="Sum of the steps' wall-clock seconds."
    )
    cost: DecimalString = Field(
        default="0",
        description="Cost in currency (wallSeconds x the Agents' perHour / 3600, plus tokens), "
        "as a decimal string. A Run charged in several currencies lists each in costs; "
        "costs are never added across currencies.",
    )
    currency: Currency = Field(
        default="USD", description="ISO 4217 currency code of cost: the first one charged."
    )
    costs: list[CurrencyCost] | None = Field(
        default=None,
        max_length=MAX_STEPS,  # one currency per Agent at most
        json_schema_extra=list_map("currency"),
        description="Cost per currency.",
    )
    tokens: list[ModelTokens] | None = Field(
        default=None,
        max_length=MAX_USAGE_MODELS,
        description="Tokens per model (and currency) that the steps reported: the first "
        f"{MAX_USAGE_MODELS} models; the usage records in Postgres hold every one.",
    )
