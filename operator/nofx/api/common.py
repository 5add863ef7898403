"""Building blocks shared by the Agent, Template and Run types: the base model, bounded string
types, references, the Kubernetes Condition, and the helpers that attach Kubernetes schema
extensions (CEL rules, list types) to fields."""

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "nofx.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Condition types and reasons the operator writes; users `kubectl wait --for=condition=...`.
READY = "Ready"
SUCCEEDED = "Succeeded"

# Bounds keep objects small (etcd refuses objects over 1.5 MB) and let the API server estimate the
# cost of every CEL rule, which it refuses to install without them.
MAX_STEPS = 100
MAX_FINALLY_STEPS = 20
MAX_DEPENDENCIES = 50
MAX_PARAMETERS = 50
MAX_NAME_LENGTH = 253
# A Job is named after its Run, step and attempt and must fit a 63-character label value.
MAX_STEP_NAME_LENGTH = 40
MAX_TEXT_LENGTH = 4096
MAX_SHORT_TEXT_LENGTH = 1024

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Parameter, input and output names: usable in `{{ params.NAME }}` and as file or variable names.
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_-]*$"
# Skills, tools, billing accounts: free-form words without spaces.
TAG = r"^[A-Za-z0-9]([-A-Za-z0-9_.:/@]*[A-Za-z0-9])?$"
# Go duration syntax as Tekton and Argo accept it: "30s", "5m", "1h30m", "1.5h", "250ms"; each
# unit at most once, in this order, with at most 6 digits before the point, so that no value
# overflows (the largest is under 1,017,000 hours; Go durations end near 2,562,047 hours).
_DURATION_PART = r"([0-9]{1,6}(\.[0-9]{1,9})?%s)?"
DURATION = "^" + "".join(_DURATION_PART % unit for unit in ("h", "m", "s", "ms")) + "$"
MAX_DURATION_LENGTH = 32
# The longest duration any field allows (a Run's timeout).
MAX_DURATION = timedelta(days=30)
# Kubernetes resource quantity without sign or exponent: "500m", "2", "1.5", "512Mi", "1G".
QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i)?$"
DECIMAL = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"
CURRENCY = r"^[A-Z]{3}$"
# A key of a ConfigMap or Secret: not "." and not starting with "..".
CONFIG_KEY = r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$"
CONDITION_TYPE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_SUBDOMAIN)]
StepName = Annotated[str, Field(min_length=1, max_length=MAX_STEP_NAME_LENGTH, pattern=DNS_LABEL)]
Identifier = Annotated[str, Field(min_length=1, max_length=63, pattern=IDENTIFIER)]
Tag = Annotated[str, Field(min_length=1, max_length=128, pattern=TAG)]
# A Kueue LocalQueue's name, which step Jobs carry as a label value (63 characters at most).
QueueName = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_SUBDOMAIN)]
Text = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
ShortText = Annotated[str, Field(max_length=MAX_SHORT_TEXT_LENGTH)]
# A string that may contain `{{ ... }}` expressions (see nofx.templating).
TemplatedString = Annotated[str, Field(max_length=MAX_TEXT_LENGTH)]
Quantity = Annotated[str, Field(max_length=32, pattern=QUANTITY)]
DecimalString = Annotated[str, Field(max_length=32, pattern=DECIMAL)]
Currency = Annotated[str, Field(min_length=3, max_length=3, pattern=CURRENCY)]
SpecHash = Annotated[str, Field(max_length=128)]


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One x-kubernetes-validations entry; field_path makes the rejection name that field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """Schema extra that attaches CEL rules to a model or a field."""
    return {"x-kubernetes-validations": list(rules)}


def list_map(*keys: str) -> dict[str, Any]:
    """Schema extra for a list whose items are unique by `keys` (the API server rejects
    duplicates and server-side apply merges items by key)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


LIST_SET: dict[str, Any] = {"x-kubernetes-list-type": "set"}


def parse_duration(text: str, maximum: timedelta = MAX_DURATION) -> timedelta:
    """Parses a Duration ("30s", "1h30m", "1.5h", "250ms") of at most maximum."""
    if not text or not re.fullmatch(DURATION, text):
        raise ValueError(
            f"invalid duration {text!r}: use e.g. 30s, 5m, 1h30m (h, m, s, ms in this order, "
            "each at most once and with at most 6 digits before the point)"
        )
    unit_seconds = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    seconds = sum(
        float(amount) * unit_seconds[unit]
        for amount, unit in re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text)
    )
    if seconds > maximum.total_seconds():
        raise ValueError(f"duration {text!r} is longer than {maximum.total_seconds() / 3600:g}h")
    return timedelta(seconds=seconds)


class ApiModel(BaseModel):
    """Base of every API type: snake_case in Python, camelCase in YAML, unknown fields rejected
    so that a typo in a manifest is an error rather than silently ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalObjectReference(ApiModel):
    """A reference to an object by name in the same namespace."""

    name: Name = Field(description="Name of the object.")


class KeySelector(ApiModel):
    """A reference to one key of a Secret or ConfigMap in the same namespace."""

    name: Name = Field(description="Name of the Secret or ConfigMap.")
    key: str = Field(
        min_length=1, max_length=MAX_NAME_LENGTH, pattern=CONFIG_KEY, description="Key in its data."
    )


class Condition(ApiModel):
    """The standard Kubernetes condition (same shape as metav1.Condition)."""

    type: str = Field(
        max_length=316,
        pattern=CONDITION_TYPE,
        description="Type of the condition in CamelCase, e.g. Ready or Succeeded.",
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="Status of the condition: True, False or Unknown."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was set for."
    )
    last_transition_time: datetime = Field(
        description="Last time the condition changed from one status to another."
    )
    reason: str = Field(
        min_length=1,
        max_length=MAX_SHORT_TEXT_LENGTH,
        pattern=CONDITION_REASON,
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        max_length=32768, description="Human-readable details about the last transition."
    )


Conditions = Annotated[list[Condition], Field(max_length=16, json_schema_extra=list_map("type"))]


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata these types read; other keys are kept as they are."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = Field(default=None, description="Name of the object.")
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    labels: dict[str, str] | None = Field(default=None, description="Labels of the object.")
    annotations: dict[str, str] | None = Field(
        default=None, description="Annotations of the object."
    )


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get`."""

    name: str
    json_path: str
    description: str
    type: str = "string"
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """What the CRD says about a kind besides its schema."""

    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    selectable_fields: tuple[str, ...] = field(default=())


AGE_COLUMN = PrinterColumn(
    "Age", ".metadata.creationTimestamp", "Time since the object was created.", type="date"
)
READY_COLUMN = PrinterColumn(
    "Ready", '.status.conditions[?(@.type=="Ready")].status', "Whether the object is usable."
)


class Resource(ApiModel):
    """Base of the three kinds: apiVersion, kind, metadata, spec and status."""

    kind_info: ClassVar[KindInfo]

    api_version: Literal["nofx.dev/v1alpha1"] = Field(
        default="nofx.dev/v1alpha1",
        description="APIVersion defines the versioned schema of this representation of an object.",
    )
    metadata: ObjectMeta = Field(
        default_factory=lambda: ObjectMeta(), description="Standard object metadata."
    )
