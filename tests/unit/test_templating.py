"""`{{ ... }}` expressions: parsing, listing references, rendering."""

import re
from typing import Any

import pytest

from nofx.planner.templating import Reference, TemplateError, references, render, render_value

CONTEXT: dict[str, Any] = {
    "params": {"repo": "nofx-dev/api", "count": 3, "repos": ["a", "b"], "dryRun": False},
    "steps": {"plan": {"outputs": {"task": "Fix it", "plan": {"steps": [1, 2]}}}},
    "item": {"repo": "nofx-dev/web", "owner": None},
    "index": 2,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("repo {{ params.repo }}", "repo nofx-dev/api"),
        ("{{params.repo}}", "nofx-dev/api"),
        ("{{ steps.plan.outputs.task }}!", "Fix it!"),
        ("{{ item.repo }} #{{ index }}", "nofx-dev/web #2"),
        ("{{ params.count }} repos: {{ params.repos }}", '3 repos: ["a","b"]'),
        ("{{ steps.plan.outputs.plan }}", '{"steps":[1,2]}'),
        ("dry run: {{ params.dryRun }}", "dry run: false"),
        ("owner: {{ item.owner }}.", "owner: ."),
        ("no expressions, {single braces}", "no expressions, {single braces}"),
        ("{{ unclosed", "{{ unclosed"),
    ],
)
def test_render(text: str, expected: str) -> None:
    assert render(text, CONTEXT) == expected


def test_render_value_keeps_the_json_value_of_a_single_expression() -> None:
    assert render_value("{{ params.repos }}", CONTEXT) == ["a", "b"]
    assert render_value("  {{ params.count }} ", CONTEXT) == 3
    assert render_value("{{ item }}", CONTEXT) == {"repo": "nofx-dev/web", "owner": None}
    assert render_value("{{ params.count }} and {{ index }}", CONTEXT) == "3 and 2"


def test_references_lists_every_expression_in_order() -> None:
    found = references("{{ params.repo }} {{ steps.plan.outputs.task }} {{ item }} {{ index }}")
    assert found == [
        Reference(("params", "repo")),
        Reference(("steps", "plan", "outputs", "task")),
        Reference(("item",)),
        Reference(("index",)),
    ]
    assert [(r.parameter, r.step) for r in found] == [
        ("repo", None),
        (None, "plan"),
        (None, None),
        (None, None),
    ]
    assert str(found[1]) == "{{ steps.plan.outputs.task }}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ }}", "invalid expression"),
        ("{{ params.repo | upper }}", "invalid expression"),
        ("{{ __import__('os').system('id') }}", "invalid expression"),
        ("{{ secrets.token }}", "expressions start with params, steps, item or index"),
        ("{{ params }}", "use {{ params.NAME }}"),
        ("{{ steps.plan }}", "use {{ steps.STEP.outputs.KEY }}"),
        ("{{ steps.plan.status }}", "use {{ steps.STEP.outputs.KEY }}"),
        ("{{ index.value }}", "index is a number"),
    ],
)
def test_malformed_expressions_are_named(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(message)):
        references(text)


@pytest.mark.parametrize(
    ("text", "context", "message"),
    [
        (
            "{{ params.branch }}",
            CONTEXT,
            'cannot resolve {{ params.branch }}: params has no "branch"',
        ),
        (
            "{{ steps.review.outputs.verdict }}",
            CONTEXT,
            'steps has no "review"',
        ),
        (
            "{{ steps.plan.outputs.url }}",
            CONTEXT,
            'steps.plan.outputs has no "url"',
        ),
        ("{{ params.repo.name }}", CONTEXT, 'params.repo has no "name"'),
        ("{{ item }}", {"params": {}}, "{{ item }} is only available in a forEach step"),
        ("{{ params.repo }}", {}, 'the context has no "params"'),
    ],
)
def test_unknown_references_are_clear_errors(
    text: str, context: dict[str, Any], message: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        render(text, context)
    assert message in str(caught.value)
