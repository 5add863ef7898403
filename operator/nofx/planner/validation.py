"""Checks the API server cannot make: they need the whole plan (dependency cycles, references
between steps), the declared parameters, or values known only while a Run runs.

Functions return error messages, each starting with the path of the field at fault, and never
raise for bad user input. The operator puts the messages in status and Events.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from nofx.api.template import Parameter, ParameterType, Step, TemplateSpec, json_type
from nofx.planner.templating import Reference, TemplateError, references, render_value

MAX_FOR_EACH_ITEMS = 100


def spec_hash(spec: BaseModel | Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no whitespace) of a spec. Pass the parsed
    model so that defaults are filled in the same way wherever the hash is computed."""
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_plan(plan: TemplateSpec, parameters_path: str = "spec.parameters") -> list[str]:
    """Everything wrong with a plan (a Template's spec, or a Run's inline plan) that the API
    server let through: parameter declarations, unknown or cyclic dependencies, and expressions
    that name undeclared parameters or steps that are not upstream. For an inline plan pass
    parameters_path="spec.parameterDefinitions"."""
    errors = _parameter_errors(plan.parameters or [], parameters_path)
    declared = {parameter.name for parameter in plan.parameters or ()}
    finally_steps = plan.finally_ or []
    main_names = {step.name for step in plan.steps}
    for index, step in enumerate(finally_steps):
        if step.name in main_names:
            errors.append(f'spec.finally[{index}].name: "{step.name}" is also the name of a step')

    known = main_names | {step.name for step in finally_steps}
    for list_name, steps in (("steps", plan.steps), ("finally", finally_steps)):
        errors += _dependency_errors(f"spec.{list_name}", steps)
        upstream = _upstream(steps)
        # Finally steps run after all main steps, so they may read any of them.
        readable_before = main_names if list_name == "finally" else set()
        for index, step in enumerate(steps):
            scope = _Scope(declared, known, readable_before | upstream[step.name], step.name)
            for field, text in _templated_fields(step):
                # item and index exist in the inputs of each item, not where the items come from.
                allow_item = step.for_each is not None and field != "forEach"
                errors += scope.check(f"spec.{list_name}[{index}].{field}", text, allow_item)

    outputs_scope = _Scope(declared, known, known, reader=None)
    for index, output in enumerate(plan.outputs or ()):
        errors += outputs_scope.check(f"spec.outputs[{index}].value", output.value, False)
    return errors


def find_cycle(steps: Sequence[Step]) -> list[str] | None:
    """A dependency cycle among steps as names, first repeated last (["a", "b", "a"] means a
    depends on b, which depends on a); None if there is none. Unknown names are ignored."""
    depends_on = {step.name: list(step.depends_on or ()) for step in steps}
    finished: set[str] = set()
    trail: list[str] = []

    def visit(name: str) -> list[str] | None:
        trail.append(name)
        for dependency in depends_on[name]:
            if dependency in trail:
                return [*trail[trail.index(dependency) :], dependency]
            if dependency in depends_on and dependency not in finished:
                cycle = visit(dependency)
                if cycle:
                    return cycle
        trail.pop()
        finished.add(name)
        return None

    for step in steps:
        if step.name not in finished:
            cycle = visit(step.name)
            if cycle:
                return cycle
    return None


def resolve_parameters(
    declared: Sequence[Parameter] | None, given: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """The parameter values of a Run: given values checked against their declarations, and
    defaults for the rest. A parameter that is neither set nor required and has no default
    has the value null. Returns (values, errors)."""
    declared = declared or []
    given = given or {}
    values: dict[str, Any] = {}
    errors = []
    names = [parameter.name for parameter in declared]
    for name in given:
        if name not in names:
            known = ", ".join(names) or "none"
            errors.append(f"spec.parameters.{name}: not a declared parameter (declared: {known})")
    for parameter in declared:
        if parameter.name in given:
            value = given[parameter.name]
        elif parameter.default is not None:
            value = parameter.default
        elif parameter.required:
            errors.append(f"spec.parameters.{parameter.name}: required parameter is not set")
            continue
        else:
            value = None
        problem = _value_problem(parameter, value) if value is not None else None
        if problem:
            errors.append(f"spec.parameters.{parameter.name}: {problem}")
        else:
            values[parameter.name] = value
    return values, errors


def expand_for_each(step: Step, context: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
    """The items of a forEach step: its expression rendered in context must be a JSON array
    (a list value, or a string holding one). Returns (items, errors)."""
    if step.for_each is None:
        raise ValueError(f"step {step.name} has no forEach")
    where = f"steps.{step.name}.forEach"
    try:
        value = render_value(step.for_each, context)
    except TemplateError as error:
        return [], [f"{where}: {error}"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [], [f"{where}: must render to a JSON array, got the string {value!r}"]
    if not isinstance(value, list):
        shown = json.dumps(value, separators=(",", ":"))
        return [], [f"{where}: must render to a JSON array, got {shown}"]
    if len(value) > MAX_FOR_EACH_ITEMS:
        return [], [f"{where}: {len(value)} items, at most {MAX_FOR_EACH_ITEMS} are allowed"]
    return value, []


def _parameter_errors(parameters: Sequence[Parameter], path: str) -> list[str]:
    errors = []
    for index, parameter in enumerate(parameters):
        where = f"{path}[{index}]"
        for position, option in enumerate(parameter.enum or ()):
            problem = _type_problem(parameter.type, option)
            if problem:
                errors.append(f"{where}.enum[{position}]: {problem}")
        if parameter.default is None:
            continue
        if parameter.required:
            errors.append(f"{where}.default: a required parameter cannot have a default")
        problem = _value_problem(parameter, parameter.default)
        if problem:
            errors.append(f"{where}.default: {problem}")
    return errors


def _value_problem(parameter: Parameter, value: Any) -> str | None:
    """Why value does not fit the declaration, or None."""
    problem = _type_problem(parameter.type, value)
    if problem:
        return problem
    if parameter.enum is not None and value not in parameter.enum:
        options = ", ".join(json.dumps(option) for option in parameter.enum)
        return f"must be one of {options}; got {json.dumps(value)}"
    return None


def _type_problem(expected: ParameterType, value: Any) -> str | None:
    actual = json_type(value)
    if actual == expected or (expected == "number" and actual == "integer"):
        return None
    article = "an" if expected[0] in "aeiou" else "a"
    return f"must be {article} {expected}, got {actual} {json.dumps(value)}"


def _dependency_errors(path: str, steps: Sequence[Step]) -> list[str]:
    errors = []
    names = [step.name for step in steps]
    for index, step in enumerate(steps):
        if step.name in names[:index]:
            errors.append(f'{path}[{index}].name: duplicate step name "{step.name}"')
        for dependency in step.depends_on or ():
            if dependency not in names:
                errors.append(f'{path}[{index}].dependsOn: unknown step "{dependency}"')
    cycle = find_cycle(steps)
    if cycle:
        errors.append(f"{path}: dependency cycle {' -> '.join(cycle)}")
    return errors


def _upstream(steps: Sequence[Step]) -> dict[str, set[str]]:
    """For each step, every step it transitively depends on."""
    depends_on = {step.name: set(step.depends_on or ()) for step in steps}
    result = {}
    for name in depends_on:
        seen: set[str] = set()
        pending = list(depends_on[name])
        while pending:
            dependency = pending.pop()
            if dependency not in seen:
                seen.add(dependency)
                pending.extend(depends_on.get(dependency, ()))
        result[name] = seen
    return result


def _templated_fields(step: Step) -> list[tuple[str, str]]:
    """(field path relative to the step, text) of every field that may hold expressions."""
    fields = [(f"inputs.{key}", value) for key, value in (step.inputs or {}).items()]
    fields += [(f"when[{index}].input", when.input) for index, when in enumerate(step.when or ())]
    if step.for_each is not None:
        fields.append(("forEach", step.for_each))
    if step.child_run:
        parameters = step.child_run.parameters or {}
        fields += [
            (f"childRun.parameters.{key}", value)
            for key, value in parameters.items()
            if isinstance(value, str)
        ]
    return fields


@dataclass(frozen=True)
class _Scope:
    """What the expressions of one step (or of the plan's outputs, reader None) may refer to."""

    declared: set[str]
    known_steps: set[str]
    readable_steps: set[str]
    reader: str | None

    def check(self, where: str, text: str, allow_item: bool) -> list[str]:
        try:
            found = references(text)
        except TemplateError as error:
            return [f"{where}: {error}"]
        problems = (self._problem(reference, allow_item) for reference in found)
        return [f"{where}: {problem}" for problem in problems if problem]

    def _problem(self, reference: Reference, allow_item: bool) -> str | None:
        parameter, step = reference.parameter, reference.step
        if parameter is not None and parameter not in self.declared:
            return f'{reference} refers to parameter "{parameter}", which is not declared'
        if step is not None and step not in self.known_steps:
            return f'{reference} refers to unknown step "{step}"'
        if step is not None and step not in self.readable_steps:
            return (
                f'{reference}: step "{step}" is not upstream of step "{self.reader}" '
                "(not in its dependsOn, directly or through other steps)"
            )
        if reference.root in ("item", "index") and not allow_item:
            return f"{reference} is only available in the inputs of a forEach step"
        return None
