"""The console's pages through Starlette's test client, over an in-memory stand-in for the
Kubernetes reads and no database: what each page renders, its links and its errors."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from nofx.console import app, pages

from .test_console_views import ChunkedList, dag_run, job, runs


class FakeCluster:
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.listing = ChunkedList(items)
        self.items = items

    def list_chunk(
        self, plural: str, namespace: str, token: str, limit: int
    ) -> tuple[list[dict[str, Any]], str]:
        return self.listing(token, limit) if plural == "runs" else ([], "")

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return next((i for i in self.items if i["metadata"]["name"] == name), None)

    def run_jobs(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        return [job("plan", 1, 0, 10), job("build", 1, 10, 30)]

    def run_events(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "Normal", "reason": "Started", "message": "the Run started",
                 "count": 1, "metadata": {}}]  # fmt: skip


def client(items: list[dict[str, Any]], namespaces: tuple[str, ...] = ()) -> TestClient:
    console = pages.Console(FakeCluster(items), None, app.templates(), namespaces)  # type: ignore[arg-type]
    return TestClient(app.create_app(console), raise_server_exceptions=True)


@pytest.fixture
def many() -> list[dict[str, Any]]:
    items = runs(70)
    for item in items:
        item["metadata"]["namespace"] = "team-a"
        item["spec"] = {"templateRef": {"name": "ship"}}
        item["status"]["account"] = "acme"
    items[3]["status"]["phase"] = "Failed"
    return [*items, dag_run()]


def test_the_runs_page_is_a_form_a_table_and_a_next_page_link(many: list[dict[str, Any]]) -> None:
    page = client(many).get("/runs?limit=20")
    assert page.status_code == 200
    html = page.text
    assert html.count('href="/runs/team-a/r0') == 20
    for field in ("namespace", "phase", "template", "account", "limit"):
        assert re.search(rf'<label>[^<]*<(input|select) name="{field}"', html), field
    assert 'href="/registry/Template/team-a/ship"' in html and 'href="/usage?account=acme"' in html
    assert 'rel="next" href="/runs?limit=20&amp;continue=20"' in html
    second = client(many).get("/runs?limit=20&continue=20").text
    assert 'href="/runs/team-a/r020"' in second and "First page" in second


def test_the_runs_page_filters_by_phase(many: list[dict[str, Any]]) -> None:
    html = client(many).get("/runs?phase=Failed").text
    assert re.findall(r'href="/runs/team-a/(\w+)"', html) == ["r003"]
    assert "filtered from 71 read" in html and 'rel="next"' not in html


def test_a_run_page_draws_its_dag_and_lists_steps_attempts_and_approvals() -> None:
    html = client([dag_run()]).get("/runs/team-a/ship").text
    assert '<svg role="img" aria-label="Steps of Run ship' in html
    assert html.count('class="node"') == 5
    assert 'id="step-release"' in html and "AwaitingApproval" in html
    assert "plan #1" in html and "build #1" in html  # the Gantt rows
    assert "waiting for a person (nofx approve ship --step release)" in html
    assert "the Run started" in html
    assert 'href="/runs/team-a/ship/audit"' in html


def test_missing_things_and_pages_that_need_postgres_say_why() -> None:
    console = client([dag_run()])
    missing = console.get("/runs/team-a/nope")
    assert missing.status_code == 404 and "no Run team-a/nope" in missing.text
    audit = console.get("/runs/team-a/ship/audit")
    assert audit.status_code == 503 and "no database" in audit.text
    assert "Name an account" in console.get("/usage").text


def test_a_console_for_some_namespaces_reads_no_other(many: list[dict[str, Any]]) -> None:
    console = client(many, namespaces=("team-a",))
    assert 'value="team-a"' in console.get("/runs").text  # the first served, by default
    refused = console.get("/runs/team-b/ship")
    assert refused.status_code == 404 and "serves the namespaces team-a" in refused.text


class FakeUsage:
    """The two usage queries of the store, as Postgres would answer them."""

    def usage(self, account: str, since: Any) -> list[dict[str, Any]]:
        row = {"day": "2026-12-01", "account": account, "agent": "coder", "attempts": 2,
               "wall_seconds": 4.0, "wall_cost": "0.2", "token_cost": "0", "cost": "0.2",
               "currency": "EUR"}  # fmt: skip
        return [
            {**row, "queue": None, "queued_seconds": None},
            {**row, "queue": "main", "queued_seconds": 3.5},
        ]

    def usage_by_model(self, account: str, since: Any) -> list[dict[str, Any]]:
        return []


def test_the_usage_page_tells_apart_the_queues_an_agent_ran_in() -> None:
    console = pages.Console(FakeCluster([]), FakeUsage(), app.templates(), ())  # type: ignore[arg-type]
    html = TestClient(app.create_app(console)).get("/usage?account=acme&since=2026-12-01").text
    cells = re.findall(r"<tr><td>2026-12-01</td>(.*?)</tr>", html)
    assert [re.findall(r"<td>(.*?)</td>", row) for row in cells] == [
        ["coder", "-", "2", "4.0", "-", "0.2", "EUR"],
        ["coder", "main", "2", "4.0", "3.5", "0.2", "EUR"],
    ]
