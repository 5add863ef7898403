"""`{{ ... }}` expressions in step inputs, when guards, forEach, childRun parameters and outputs.

An expression names one value of the render context; nothing is evaluated (no eval, no Jinja):

    {{ params.NAME }}               a parameter of the Run
    {{ steps.STEP.outputs.KEY }}    an output of an upstream step (for a forEach step: a list
                                    with one entry per item)
    {{ steps.STEP.outputs }}        all outputs of an upstream step, as an object
    {{ item }}  {{ item.KEY }}      the current item of a forEach step
    {{ index }}                     the index of that item

Further `.KEY` segments read into JSON objects. The context is a plain dict:

    {"params": {...}, "steps": {"STEP": {"outputs": {...}}}, "item": ..., "index": 0}
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# No braces inside, so "{{ a }} and {{ b }}" is two expressions, never one.
EXPRESSION = re.compile(r"\{\{([^{}]*)\}\}")
PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*(\.[A-Za-z0-9_][A-Za-z0-9_-]*)*")
ROOTS = ("params", "steps", "item", "index")


class TemplateError(ValueError):
    """An expression that is malformed or names a value the context does not have."""


@dataclass(frozen=True)
class Reference:
    """One parsed expression, e.g. path ("steps", "plan", "outputs", "summary")."""

    path: tuple[str, ...]

    @property
    def root(self) -> str:
        return self.path[0]

    @property
    def step(self) -> str | None:
        """The step whose outputs this reads, if any."""
        return self.path[1] if self.root == "steps" else None

    @property
    def parameter(self) -> str | None:
        """The parameter this reads, if any."""
        return self.path[1] if self.root == "params" else None

    def __str__(self) -> str:
        return "{{ " + ".".join(self.path) + " }}"


def parse(expression: str) -> Reference:
    """Parses the text between `{{` and `}}`."""
    text = expression.strip()
    shown = "{{ " + text + " }}"
    if not PATH.fullmatch(text):
        raise TemplateError(
            f"invalid expression {shown}: expected a dotted name such as params.NAME"
        )
    path = tuple(text.split("."))
    root = path[0]
    if root not in ROOTS:
        raise TemplateError(
            f"unknown reference {shown}: expressions start with params, steps, item or index"
        )
    if root == "params" and len(path) < 2:
        raise TemplateError(f"incomplete reference {shown}: use {{{{ params.NAME }}}}")
    if root == "steps" and (len(path) < 3 or path[2] != "outputs"):
        raise TemplateError(f"incomplete reference {shown}: use {{{{ steps.STEP.outputs.KEY }}}}")
    if root == "index" and len(path) > 1:
        raise TemplateError(f"invalid reference {shown}: index is a number and has no fields")
    return Reference(path)


def references(text: str) -> list[Reference]:
    """Every expression in text, in order. Raises TemplateError for a malformed one."""
    return [parse(match.group(1)) for match in EXPRESSION.finditer(text)]


def resolve(reference: Reference, context: Mapping[str, Any]) -> Any:
    """The value a reference names. Raises TemplateError if the context does not have it."""
    if reference.root in ("item", "index") and reference.root not in context:
        raise TemplateError(f"{reference} is only available in a forEach step")
    value: Any = context
    for depth, key in enumerate(reference.path):
        if not isinstance(value, Mapping) or key not in value:
            where = ".".join(reference.path[:depth]) or "the context"
            raise TemplateError(f'cannot resolve {reference}: {where} has no "{key}"')
        value = value[key]
    return value


def render(text: str, context: Mapping[str, Any]) -> str:
    """Replaces every expression by its value: strings as they are, null as an empty string,
    anything else as compact JSON."""
    return EXPRESSION.sub(lambda match: _as_text(resolve(parse(match.group(1)), context)), text)


def render_value(text: str, context: Mapping[str, Any]) -> Any:
    """Like render, but a text that is exactly one expression gives the raw JSON value (so
    `{{ params.repos }}` stays a list)."""
    match = EXPRESSION.fullmatch(text.strip())
    if match:
        return resolve(parse(match.group(1)), context)
    return render(text, context)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
