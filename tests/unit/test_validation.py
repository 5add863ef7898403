"""Checks the API server cannot make: graph, references, parameters, forEach, spec hashes."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from nofx.api import Parameter, RunSpec, Step, TemplateSpec
from nofx.planner.validation import (
    MAX_FOR_EACH_ITEMS,
    expand_for_each,
    find_cycle,
    resolve_parameters,
    spec_hash,
    validate_plan,
)

ROOT = Path(__file__).resolve().parents[2]


def step(name: str, *depends_on: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "agentRef": {"name": "coder"}, "dependsOn": list(depends_on), **fields}


def plan(*steps: dict[str, Any], **fields: Any) -> TemplateSpec:
    return TemplateSpec.model_validate({"steps": list(steps), **fields})


def steps(*specs: dict[str, Any]) -> list[Step]:
    return [Step.model_validate(spec) for spec in specs]


# --- the dependency graph ------------------------------------------------------------------


def test_find_cycle_names_the_cycle() -> None:
    assert find_cycle(steps(step("a", "b"), step("b", "a"))) == ["a", "b", "a"]
    assert find_cycle(steps(step("x"), step("a", "c"), step("b", "a"), step("c", "b"))) == [
        "a",
        "c",
        "b",
        "a",
    ]
    assert find_cycle(steps(step("a", "a"))) == ["a", "a"]


def test_find_cycle_accepts_a_dag_with_shared_dependencies() -> None:
    dag = steps(step("plan"), step("x", "plan"), step("y", "plan"), step("join", "x", "y"))
    assert find_cycle(dag) is None


def test_validate_plan_reports_cycles_and_unknown_steps() -> None:
    errors = validate_plan(plan(step("a", "b"), step("b", "a"), step("c", "ghost")))
    assert errors == [
        'spec.steps[2].dependsOn: unknown step "ghost"',
        "spec.steps: dependency cycle a -> b -> a",
    ]


def test_finally_steps_depend_only_on_finally_steps() -> None:
    errors = validate_plan(plan(step("build"), finally_=[step("report", "build")]))
    assert errors == ['spec.finally[0].dependsOn: unknown step "build"']


def test_duplicate_names_across_steps_and_finally() -> None:
    errors = validate_plan(plan(step("a"), step("a"), finally_=[step("a")]))
    assert 'spec.finally[0].name: "a" is also the name of a step' in errors
    assert 'spec.steps[1].name: duplicate step name "a"' in errors


# --- references in expressions -------------------------------------------------------------


def test_inputs_may_read_transitive_upstream_steps_and_declared_parameters() -> None:
    spec = plan(
        step("plan"),
        step("code", "plan"),
        step("review", "code", inputs={"task": "{{ steps.plan.outputs.task }} {{ params.repo }}"}),
        parameters=[{"name": "repo"}],
    )
    assert validate_plan(spec) == []


def test_reading_a_step_that_is_not_upstream_is_an_error() -> None:
    spec = plan(
        step("plan"),
        step("code"),
        step(
            "review",
            "code",
            when=[{"input": "{{ steps.plan.outputs.ok }}", "operator": "In", "values": ["yes"]}],
        ),
    )
    assert validate_plan(spec) == [
        'spec.steps[2].when[0].input: {{ steps.plan.outputs.ok }}: step "plan" is not upstream'
        ' of step "review" (not in its dependsOn, directly or through other steps)'
    ]


def test_a_step_cannot_read_its_own_outputs() -> None:
    errors = validate_plan(plan(step("a", inputs={"x": "{{ steps.a.outputs.x }}"})))
    assert len(errors) == 1 and 'step "a" is not upstream of step "a"' in errors[0]


def test_unknown_parameter_and_step_references() -> None:
    spec = plan(
        step("a", inputs={"repo": "{{ params.repo }}", "y": "{{ steps.zzz.outputs.y }}"}),
        outputs=[{"name": "url", "value": "{{ steps.nope.outputs.url }}"}],
    )
    assert validate_plan(spec) == [
        'spec.steps[0].inputs.repo: {{ params.repo }} refers to parameter "repo", which is not'
        " declared",
        'spec.steps[0].inputs.y: {{ steps.zzz.outputs.y }} refers to unknown step "zzz"',
        'spec.outputs[0].value: {{ steps.nope.outputs.url }} refers to unknown step "nope"',
    ]


def test_malformed_expression_is_reported_with_its_field() -> None:
    errors = validate_plan(plan(step("a", inputs={"x": "{{ secrets.token }}"})))
    assert len(errors) == 1
    assert errors[0].startswith("spec.steps[0].inputs.x: unknown reference {{ secrets.token }}")


def test_item_and_index_only_in_the_inputs_of_a_for_each_step() -> None:
    spec = plan(
        step("fan", forEach="{{ params.repos }}", inputs={"repo": "{{ item }} {{ index }}"}),
        step("join", "fan", inputs={"repos": "{{ steps.fan.outputs.url }}", "bad": "{{ item }}"}),
        step("self", forEach="{{ item }}"),
        parameters=[{"name": "repos", "type": "array"}],
    )
    assert validate_plan(spec) == [
        "spec.steps[1].inputs.bad: {{ item }} is only available in the inputs of a forEach step",
        "spec.steps[2].forEach: {{ item }} is only available in the inputs of a forEach step",
    ]


def test_finally_steps_may_read_any_main_step_and_outputs_any_step() -> None:
    spec = plan(
        step("a"),
        step("b"),
        finally_=[step("report", inputs={"a": "{{ steps.a.outputs.x }}"})],
        outputs=[{"name": "o", "value": "{{ steps.b.outputs.y }} {{ steps.report.outputs.z }}"}],
    )
    assert validate_plan(spec) == []


def test_child_run_parameters_are_checked_as_templates() -> None:
    child = {"templateRef": {"name": "linear"}, "parameters": {"task": "{{ params.t }}", "n": 3}}
    errors = validate_plan(plan({"name": "delegate", "childRun": child}))
    assert errors == [
        'spec.steps[0].childRun.parameters.task: {{ params.t }} refers to parameter "t", which'
        " is not declared"
    ]


# --- parameter declarations and values -----------------------------------------------------


def test_parameter_declarations_are_consistent() -> None:
    spec = plan(
        step("a"),
        parameters=[
            {"name": "count", "type": "integer", "default": "three"},
            {"name": "mode", "required": True, "default": "fast"},
            {"name": "level", "type": "integer", "enum": [1, "two"]},
        ],
    )
    assert validate_plan(spec, parameters_path="spec.parameterDefinitions") == [
        'spec.parameterDefinitions[0].default: must be an integer, got string "three"',
        "spec.parameterDefinitions[1].default: a required parameter cannot have a default",
        'spec.parameterDefinitions[2].enum[1]: must be an integer, got string "two"',
    ]


DECLARED = [
    Parameter(name="repo", required=True),
    Parameter(name="branch", default="main"),
    Parameter(name="count", type="integer", default=1),
    Parameter(name="ratio", type="number"),
    Parameter(name="channel", enum=["stable", "beta"], default="beta"),
    Parameter(name="repos", type="array", default=[]),
]


def test_resolve_parameters_applies_defaults() -> None:
    values, errors = resolve_parameters(DECLARED, {"repo": "a/b", "count": 5})
    assert errors == []
    assert values == {
        "repo": "a/b",
        "branch": "main",
        "count": 5,
        "ratio": None,
        "channel": "beta",
        "repos": [],
    }


def test_resolve_parameters_reports_every_problem_by_name() -> None:
    given = {"count": "5", "channel": "nightly", "repos": "a,b", "colour": "red", "ratio": 1}
    values, errors = resolve_parameters(DECLARED, given)
    assert errors == [
        "spec.parameters.colour: not a declared parameter (declared: repo, branch, count, ratio,"
        " channel, repos)",
        "spec.parameters.repo: required parameter is not set",
        'spec.parameters.count: must be an integer, got string "5"',
        'spec.parameters.channel: must be one of "stable", "beta"; got "nightly"',
        'spec.parameters.repos: must be an array, got string "a,b"',
    ]
    assert values == {"branch": "main", "ratio": 1}


@pytest.mark.parametrize(
    ("type_", "good", "bad"),
    [
        ("string", "x", 1),
        ("integer", 3.0, 3.5),
        ("number", 3.5, "3.5"),
        ("boolean", False, "false"),
        ("array", [1], {"a": 1}),
        ("object", {"a": 1}, [1]),
    ],
)
def test_resolve_parameters_checks_each_type(type_: Any, good: Any, bad: Any) -> None:
    declared = [Parameter(name="p", type=type_)]
    assert resolve_parameters(declared, {"p": good}) == ({"p": good}, [])
    _, errors = resolve_parameters(declared, {"p": bad})
    assert len(errors) == 1 and errors[0].startswith("spec.parameters.p: must be a")
    assert f" {type_}, got " in errors[0]


# --- forEach -------------------------------------------------------------------------------


def for_each_step(expression: str) -> Step:
    return Step.model_validate(step("fan", forEach=expression))


@pytest.mark.parametrize(
    ("expression", "items"),
    [
        ("{{ params.repos }}", ["a", "b"]),
        ('["x", {{ params.count }}]', ["x", 2]),
        ("{{ params.json }}", [1, 2]),
        ("[]", []),
    ],
)
def test_expand_for_each(expression: str, items: list[Any]) -> None:
    context = {"params": {"repos": ["a", "b"], "count": 2, "json": "[1, 2]"}}
    assert expand_for_each(for_each_step(expression), context) == (items, [])


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("{{ params.obj }}", 'must render to a JSON array, got {"a":1}'),
        ("{{ params.word }}", "must render to a JSON array, got the string 'hello'"),
        ("{{ params.missing }}", 'params has no "missing"'),
        ("{{ params.many }}", f"at most {MAX_FOR_EACH_ITEMS} are allowed"),
    ],
)
def test_expand_for_each_rejects_what_is_not_a_list(expression: str, message: str) -> None:
    context = {"params": {"obj": {"a": 1}, "word": "hello", "many": list(range(101))}}
    items, errors = expand_for_each(for_each_step(expression), context)
    assert items == []
    assert len(errors) == 1 and errors[0].startswith("steps.fan.forEach: ")
    assert message in errors[0]


# --- hashes, agents, samples ---------------------------------------------------------------


def test_spec_hash_is_canonical() -> None:
    spec = plan(step("a"), step("b", "a"))
    assert spec_hash(spec) == spec_hash(spec.to_dict())
    assert spec_hash({"x": 1, "y": [1, 2]}) == spec_hash({"y": [1, 2], "x": 1})
    assert spec_hash(spec) != spec_hash(plan(step("a"), step("b")))
    assert len(spec_hash(spec)) == 64


def sample_docs(kind: str) -> list[dict[str, Any]]:
    text = (ROOT / "manifests" / "samples" / "base" / f"{kind.lower()}s.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc and doc["kind"] == kind]


def test_sample_plans_are_valid_and_sample_runs_resolve() -> None:
    templates = {
        doc["metadata"]["name"]: TemplateSpec.model_validate(doc["spec"])
        for doc in sample_docs("Template")
    }
    for name, template in templates.items():
        assert validate_plan(template) == [], name
    for doc in sample_docs("Run"):
        run = RunSpec.model_validate(doc["spec"])
        inline = run.inline_template()
        spec = inline or templates[run.template_ref.name if run.template_ref else ""]
        assert validate_plan(spec) == [], doc["metadata"]["name"]
        assert resolve_parameters(spec.parameters, run.parameters)[1] == []
