"""Rules that OpenAPI keywords cannot express, each written once for both checkers: the API
server evaluates the CEL expression, pydantic the Python predicate next to it. Attach a Rule to
a type with Annotated[X, rule]; it adds an x-kubernetes-validations entry to the schema and an
after-validator to the model, so `kubectl apply`, the operator and the CLI refuse the same input.
Where CEL cannot see a value (a map of arbitrary JSON: ParameterValues), only pydantic checks.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from nofx.api.common import (
    DURATION,
    IDENTIFIER,
    MAX_DURATION,
    MAX_DURATION_LENGTH,
    MAX_PARAMETERS,
    QUANTITY,
    parse_duration,
)

# Sizes: a Run holds its parameters twice (spec and the pinned copy in status), and etcd refuses
# objects over 1.5 MiB, so all parameters of a Run together stay far below half of that.
MAX_VALUE_SIZE = 64 * 1024
MAX_PARAMETERS_SIZE = 256 * 1024

# A label or annotation key: an optional DNS subdomain prefix (at most 253 characters) and '/',
# then a name of at most 63 characters.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
MAX_PREFIX_LENGTH = 253
# Pod labels the Job controller or the operator set; a step Pod with its own value for one of
# these would be refused or mislabelled.
RESERVED_LABEL_PREFIXES = ("nofx.dev/", "batch.kubernetes.io/")
RESERVED_LABELS = ("job-name", "controller-uid", "app.kubernetes.io/managed-by")


@dataclass(frozen=True)
class Rule:
    """One rule in CEL (on `self`) for the API server and in Python for pydantic. check returns
    whether the value passes; it may raise ValueError to say more than message."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        json_schema = handler(schema)
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        json_schema.setdefault("x-kubernetes-validations", []).append(entry)
        return json_schema

    def _validate(self, value: Any) -> Any:
        if not self.check(value):
            raise ValueError(self.message)
        return value


def _cel_regex(pattern: str) -> str:
    """A CEL raw string literal of a regular expression."""
    assert "'" not in pattern
    return f"r'{pattern}'"


# --- durations ------------------------------------------------------------------------------


def bounded_duration(limit: timedelta) -> Any:
    """A Duration of at most limit (whole hours). DURATION allows no value that overflows, so
    CEL's duration() never fails on a string that matches it."""
    hours = int(limit.total_seconds()) // 3600

    def within(text: str) -> bool:
        try:
            parse_duration(text, maximum=limit)
        except ValueError:
            return False
        return True

    return Annotated[
        str,
        Field(min_length=2, max_length=MAX_DURATION_LENGTH, pattern=DURATION),
        Rule(
            f"!self.matches({_cel_regex(DURATION)}) || duration(self) <= duration('{hours}h')",
            f"must be at most {hours}h",
            within,
        ),
    ]


StepTimeout = bounded_duration(timedelta(days=7))
RunTimeout = bounded_duration(MAX_DURATION)
# At most 1h: the operator multiplies the first delay by factor**9 before capping it.
RetryDelay = bounded_duration(timedelta(hours=1))
MaxRetryDelay = bounded_duration(timedelta(days=1))
CacheTtl = bounded_duration(timedelta(days=30))


# --- map keys -------------------------------------------------------------------------------


def key_rule(cel_test: str, test: Callable[[str], bool], message: str) -> Rule:
    """A rule every key k of a map must pass; pydantic's error also names the keys that fail."""

    def check(mapping: Any) -> bool:
        culprits = [key for key in mapping if not test(key)]
        if culprits:
            raise ValueError(f"{message}: {', '.join(map(repr, culprits))}")
        return True

    return Rule(f"self.all(k, {cel_test})", message, check)


def is_qualified_name(key: str) -> bool:
    return bool(re.fullmatch(QUALIFIED_NAME, key)) and key.find("/") <= MAX_PREFIX_LENGTH


QUALIFIED_NAME_KEYS = key_rule(
    f"k.matches({_cel_regex(QUALIFIED_NAME)}) && k.indexOf('/') <= {MAX_PREFIX_LENGTH}",
    is_qualified_name,
    "every key must be a qualified name: an optional DNS subdomain prefix of at most 253 "
    "characters and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending "
    "with a letter or digit",
)


def is_reserved_label(key: str) -> bool:
    return key.startswith(RESERVED_LABEL_PREFIXES) or key in RESERVED_LABELS


NO_RESERVED_LABELS = key_rule(
    "!("
    + " || ".join(
        [f"k.startsWith('{prefix}')" for prefix in RESERVED_LABEL_PREFIXES]
        + [f"k == '{key}'" for key in RESERVED_LABELS]
    )
    + ")",
    lambda key: not is_reserved_label(key),
    f"keys starting with {' or '.join(RESERVED_LABEL_PREFIXES)} and the keys "
    f"{', '.join(RESERVED_LABELS)} are reserved for the Job controller and the operator",
)

IDENTIFIER_KEYS = key_rule(
    f"size(k) <= 63 && k.matches({_cel_regex(IDENTIFIER)})",
    lambda key: len(key) <= 63 and bool(re.fullmatch(IDENTIFIER, key)),
    "every key must be a name of at most 63 letters, digits, '_' or '-', starting with a letter "
    "or '_'",
)


# --- JSON values of parameters --------------------------------------------------------------


def value_size(value: Any) -> int:
    """Characters of a string, or of the JSON text of any other value."""
    if isinstance(value, str):
        return len(value)
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _small_value(value: Any) -> Any:
    if value_size(value) > MAX_VALUE_SIZE:
        raise ValueError(
            f"must be at most {MAX_VALUE_SIZE} characters (as JSON text unless a string)"
        )
    return value


# The API server applies maxLength to a string value; pydantic measures every value.
ParameterValue = Annotated[
    Any, Field(json_schema_extra={"maxLength": MAX_VALUE_SIZE}), AfterValidator(_small_value)
]


def _parameter_values(values: dict[str, Any]) -> dict[str, Any]:
    names = [name for name in values if not (len(name) <= 63 and re.fullmatch(IDENTIFIER, name))]
    if names:
        raise ValueError(f"{IDENTIFIER_KEYS.message}: {', '.join(map(repr, names))}")
    for name, value in values.items():
        if value_size(value) > MAX_VALUE_SIZE:
            raise ValueError(f"{name}: must be at most {MAX_VALUE_SIZE} characters")
    if sum(map(value_size, values.values())) > MAX_PARAMETERS_SIZE:
        raise ValueError(f"values must add up to at most {MAX_PARAMETERS_SIZE} characters")
    return values


# Parameter values by name, as Runs and child Runs set them. To the API server this map is
# opaque JSON: CEL cannot read a map of untyped values (nor could the Run's immutability rule
# then compare it), so only its size is bounded there; the models check names and sizes.
ParameterValues = Annotated[
    dict[str, Any], Field(max_length=MAX_PARAMETERS), AfterValidator(_parameter_values)
]


# --- compute resources ----------------------------------------------------------------------

_SUFFIXES = {
    "": Decimal(1),
    **{suffix: Decimal(10) ** (3 * power) for power, suffix in enumerate("kMGTPE", 1)},
    **{f"{suffix}i": Decimal(2) ** (10 * power) for power, suffix in enumerate("KMGTPE", 1)},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
}


def parse_quantity(text: str) -> Decimal:
    """The value of a Kubernetes quantity that matches QUANTITY, e.g. 0.5 for "500m"."""
    match = re.fullmatch(QUANTITY, text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}")
    return Decimal(match[1]) * _SUFFIXES[match[3] or ""]


def request_within_limit(resource: str) -> Rule:
    """The request of a resource must not exceed its limit, as Kubernetes requires of a Pod."""

    def check(resources: Any) -> bool:
        request = getattr(resources.requests, resource, None) if resources.requests else None
        limit = getattr(resources.limits, resource, None) if resources.limits else None
        return request is None or limit is None or parse_quantity(request) <= parse_quantity(limit)

    request, limit = f"self.requests.{resource}", f"self.limits.{resource}"
    return Rule(
        f"!has(self.requests) || !has(self.limits) || !has({request}) || !has({limit})"
        f" || !isQuantity({request}) || !isQuantity({limit})"
        f" || quantity({request}).compareTo(quantity({limit})) <= 0",
        f"requests.{resource} must not exceed limits.{resource}",
        check,
        field_path=f".requests.{resource}",
    )
