"""The console's view logic as plain functions: pages of a list, the DAG as dot source and SVG,
Gantt bars, step rows, approval gates, spec diffs and usage totals. No server."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from nofx.console import dag, diff, paging, run_view, usage

T0 = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def runs(count: int, phase: str = "Succeeded") -> list[dict[str, Any]]:
    return [
        {"metadata": {"name": f"r{i:03}"}, "spec": {}, "status": {"phase": phase}}
        for i in range(count)
    ]


class ChunkedList:
    """The API server's limit/continue over a fixed list; counts the requests."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items, self.requests = items, 0

    def __call__(self, token: str, limit: int) -> tuple[list[dict[str, Any]], str]:
        self.requests += 1
        start = int(token or 0)
        end = start + limit
        return self.items[start:end], str(end) if end < len(self.items) else ""


def names(page: paging.Page) -> list[str]:
    return [item["metadata"]["name"] for item in page.items]


def test_an_unfiltered_page_is_one_chunk_and_its_cursor_the_apis_continue() -> None:
    listing = ChunkedList(runs(120))
    page = paging.fill_page(listing, paging.Cursor(), 50)
    assert names(page)[0] == "r000" and len(page.items) == 50
    assert page.next == paging.Cursor("50") and listing.requests == 1
    last = paging.fill_page(listing, paging.Cursor("100"), 50)
    assert names(last)[-1] == "r119" and last.next is None


def test_a_filtered_page_resumes_inside_the_chunk_it_stopped_in() -> None:
    items = runs(600)
    for item in items[::7]:
        item["status"]["phase"] = "Failed"
    failed = [i["metadata"]["name"] for i in items if i["status"]["phase"] == "Failed"]
    keep = paging.RunFilters(phase="Failed").keep
    listing = ChunkedList(items)
    first = paging.fill_page(listing, paging.Cursor(), 20, keep)
    assert names(first) == failed[:20]
    assert first.next is not None and first.next.token == "" and first.next.skip == 134
    second = paging.fill_page(listing, first.next, 20, keep)
    assert names(second) == failed[20:40]  # nothing shown twice, nothing skipped
    pages, cursor, seen = 0, first.next, names(first)
    while cursor is not None:
        page = paging.fill_page(listing, cursor, 20, keep)
        seen += names(page)
        cursor, pages = page.next, pages + 1
    assert seen == failed


def test_a_filter_matching_nothing_stops_after_a_bounded_scan() -> None:
    listing = ChunkedList(runs(paging.FILTERED_CHUNK * paging.MAX_CHUNKS + 10))
    page = paging.fill_page(listing, paging.Cursor(), 20, paging.RunFilters(phase="Failed").keep)
    assert page.items == [] and page.cut_short
    assert listing.requests == paging.MAX_CHUNKS
    assert page.scanned == paging.FILTERED_CHUNK * paging.MAX_CHUNKS
    rest = paging.fill_page(listing, page.next or paging.Cursor(), 20, lambda _: True)
    assert names(rest)[0] == f"r{page.scanned:03}"


def test_run_filters_read_phase_template_and_pinned_account() -> None:
    body = {
        "spec": {"templateRef": {"name": "dag"}},
        "status": {"phase": "Running", "account": "acme"},
    }
    assert paging.RunFilters(phase="Running", template="dag", account="acme").keep(body)
    assert not paging.RunFilters(template="other").keep(body)
    assert not paging.RunFilters(account="globex").keep(body)
    assert paging.RunFilters(phase="Pending").keep({"spec": {}})  # no status yet: Pending


def dag_run() -> dict[str, Any]:
    plan = {
        "steps": [
            {"name": "plan", "agentRef": {"name": "planner"}},
            {"name": "build", "agentRef": {"name": "coder"}, "dependsOn": ["plan"]},
            {"name": "docs", "agentRef": {"name": "writer"}, "dependsOn": ["plan"],
             "forEach": "{{ params.pages }}"},
            {"name": "release", "agentRef": {"name": "coder"}, "dependsOn": ["build", "docs"],
             "approval": {"message": "check the notes"}, "inputs": {"tag": "{{ params.tag }}"}},
        ],
        "finally": [{"name": "notify", "agentRef": {"name": "writer"}}],
    }  # fmt: skip
    return {
        "metadata": {"name": "ship", "namespace": "team-a", "uid": "u1"},
        "spec": {"templateRef": {"name": "ship"}, "approvals": []},
        "status": {
            "phase": "WaitingApproval",
            "pinned": {"template": {"name": "ship", "spec": plan}},
            "steps": [
                {"name": "plan", "phase": "Succeeded", "attempts": 1, "outputs": {"k": "v"}},
                {"name": "build", "phase": "Succeeded", "attempts": 2},
                {"name": "docs", "index": 0, "phase": "Succeeded", "attempts": 1},
                {"name": "docs", "index": 1, "phase": "Failed", "attempts": 1},
                {"name": "release", "phase": "Waiting", "reason": "AwaitingApproval"},
            ],
        },
    }


def test_dot_source_has_every_step_its_dependencies_and_phase_colours() -> None:
    source = dag.dot_source(dag_run(), lambda step: f"#step-{step['name']}")
    for upstream, downstream in [("plan", "build"), ("plan", "docs"), ("build", "release"),
                                 ("docs", "release")]:  # fmt: skip
        assert f"{upstream} -> {downstream}" in source
    assert "release -> notify [style=dashed]" in source  # finally runs after the main steps
    lines = {line.split()[0]: line for line in source.splitlines() if "fillcolor" in line}
    assert dag.PHASE_COLOURS["Succeeded"] in lines["plan"]
    assert dag.PHASE_COLOURS["Failed"] in lines["docs"]  # the failed item tells the step's phase
    assert dag.PHASE_COLOURS["Waiting"] in lines["release"] and "(approval)" in lines["release"]
    assert dag.PHASE_COLOURS["Pending"] in lines["notify"]
    assert 'href="#step-build"' in lines["build"]


def test_an_inline_plan_is_drawn_before_the_run_pins_it() -> None:
    body = {"metadata": {"name": "x"}, "spec": {"steps": [{"name": "a"}, {"name": "b",
            "dependsOn": ["a"]}]}}  # fmt: skip
    assert "a -> b" in dag.dot_source(body, lambda step: "#")


def test_render_svg_lays_out_with_dot_and_labels_the_image() -> None:
    source = dag.dot_source(dag_run(), lambda step: f"#step-{step['name']}")
    svg = dag.render_svg(source, 'Steps of "ship"')
    assert svg.startswith('<svg role="img" aria-label="Steps of &quot;ship&quot;"')
    assert svg.count('class="node"') == 5 and svg.count('class="edge"') == 5
    assert 'href="#step-release"' in svg


def job(
    step: str,
    attempt: int,
    start: float,
    end: float | None,
    failed: bool = False,
    index: int | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    labels = {"nofx.dev/step": step, "nofx.dev/attempt": str(attempt)}
    if index is not None:
        labels["nofx.dev/index"] = str(index)
    status: dict[str, Any] = {"startTime": at(start)}
    if end is not None:
        kind = "Failed" if failed else "Complete"
        status["conditions"] = [{"type": kind, "status": "True", "lastTransitionTime": at(end)}]
    env = [{"name": "NOFX_INPUTS", "value": json.dumps(inputs or {})}]
    return {
        "metadata": {"name": f"{step}-{attempt}", "labels": labels},
        "spec": {"template": {"spec": {"containers": [{"name": "agent", "env": env}]}}},
        "status": status,
    }


def test_gantt_bars_share_one_axis_in_the_order_attempts_started() -> None:
    jobs = [
        job("build", 2, 30, 50),
        job("plan", 1, 0, 10),
        job("build", 1, 10, 20, failed=True),
        job("docs", 1, 10, None, index=1),
    ]
    bars = run_view.gantt(dag_run(), jobs, now=T0 + timedelta(seconds=100))
    assert [b.label for b in bars] == ["plan #1", "build #1", "docs[1] #1", "build #2"]
    assert [b.outcome for b in bars] == ["Succeeded", "Failed", "Running", "Succeeded"]
    assert [(b.offset, b.width) for b in bars] == [(0, 10), (10, 10), (10, 90), (30, 20)]
    assert bars[2].seconds == 90  # still running: until now


def test_gantt_shows_child_run_steps_and_nothing_for_jobs_not_started() -> None:
    body = {"status": {"steps": [{"name": "sub", "phase": "Running", "childRunName": "ship-sub",
                                  "startedAt": at(0)}]}}  # fmt: skip
    unstarted = job("plan", 1, 0, None)
    del unstarted["status"]["startTime"]
    bars = run_view.gantt(body, [unstarted], now=T0 + timedelta(seconds=5))
    assert [(b.label, b.outcome, b.seconds) for b in bars] == [("sub (child Run)", "Running", 5)]


def test_step_rows_show_the_inputs_of_the_latest_attempt_else_the_plans() -> None:
    body = dag_run()
    steps, finally_steps = dag.plan(body)
    jobs = [job("build", 1, 0, 5, inputs={"try": 1}), job("build", 2, 6, 9, inputs={"try": 2})]
    rows = {row.name: row for row in run_view.step_rows(body, [*steps, *finally_steps], jobs)}
    assert json.loads(rows["build"].inputs) == {"try": 2}
    assert json.loads(rows["release"].inputs) == {"tag": "{{ params.tag }}"}
    assert json.loads(rows["plan"].outputs) == {"k": "v"}
    assert rows["docs[0]"].anchor == "step-docs" and rows["docs[1]"].anchor == ""


def test_approval_gates_name_who_approved() -> None:
    body = dag_run()
    steps, _ = dag.plan(body)
    [gate] = run_view.approval_gates(body, steps)
    assert (gate.step, gate.asks, gate.approved_by) == ("release", "check the notes", "")
    body["spec"]["approvals"] = [{"step": "release", "approvedBy": "alice", "message": "ok"}]
    [gate] = run_view.approval_gates(body, steps)
    assert (gate.approved_by, gate.message) == ("alice", "ok")


def test_spec_diff_shows_changed_lines_only_once_and_nothing_for_equal_specs() -> None:
    old = {"description": "first", "steps": [{"name": "a"}], "timeout": "1h"}
    new = {"steps": [{"name": "a"}], "timeout": "1h", "description": "second"}
    lines = diff.spec_diff(old, new)
    assert [(line.kind, line.text) for line in lines if line.kind in ("added", "removed")] == [
        ("removed", "-description: first"),
        ("added", "+description: second"),
    ]
    assert lines[0].kind == "hunk"
    assert diff.spec_diff(old, dict(reversed(list(old.items())))) == []


def usage_rows() -> list[dict[str, Any]]:
    return [
        {"day": date(2026, 11, 19), "agent": "coder", "attempts": 3, "wall_seconds": 30.0,
         "cost": Decimal("0.30"), "currency": "USD"},
        {"day": date(2026, 11, 20), "agent": "coder", "attempts": 1, "wall_seconds": 12.5,
         "cost": Decimal("0.125"), "currency": "USD"},
        {"day": date(2026, 11, 20), "agent": "writer", "attempts": 2, "wall_seconds": 4.0,
         "cost": Decimal("0.02"), "currency": "EUR"},
    ]  # fmt: skip


def test_usage_totals_are_per_currency() -> None:
    assert usage.totals(usage_rows()) == [
        usage.Total("EUR", 2, 4.0, Decimal("0.02")),
        usage.Total("USD", 4, 42.5, Decimal("0.425")),
    ]


def test_usage_chart_is_a_labelled_svg_without_scripts_from_elsewhere() -> None:
    svg = usage.chart_svg(usage_rows(), "acme")
    assert svg.startswith('<svg role="img" aria-label="Cost per day and agent, account acme"')
    assert "coder (USD)" in svg and "writer (EUR)" in svg and "2026-11-20" in svg
    assert not re.search(r"<script[^>]*\bsrc=", svg)
    assert usage.chart_svg([], "acme") == ""
