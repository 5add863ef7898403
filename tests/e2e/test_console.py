"""`nofx console` on the real control plane and Postgres with the samples' Runs, read by a real
headless browser (Debian's chromium, driven by Playwright) and by plain HTTP without JavaScript:
the Runs list, a Run's DAG with the right nodes, edges and phases, a gate approved while the page
watches, the audit timeline with its verification (and a tampered row failing it), a Template's
history with its diff, and usage equal to `nofx usage`. Screenshots of each page are saved."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright

from nofx.console.dag import PHASE_COLOURS
from nofx_dev.processes import ManagedProcess, free_port, wait_until

from .conftest import REPO, wait_for_phase
from .test_mirror import REGION, Mirrored, mirrored, wait_mirrored  # noqa: F401 - a fixture

ACCOUNT = "team-web"
DAG_RUN, GATED_RUN = "dag-dark-mode", "release-1-4-0"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def samples(mirrored: Mirrored) -> Mirrored:  # noqa: F811 - the fixture imported above
    """The samples in namespace default (account team-web): every Run done but the release,
    which waits for its approval; the finished ones mirrored."""
    kubectl = mirrored.kubectl
    kubectl("label", "namespace", "default", f"nofx.dev/account={ACCOUNT}", "--overwrite")
    kubectl("apply", "-k", str(REPO / "manifests" / "samples" / "local"))
    names = [run["metadata"]["name"] for run in kubectl.json("get", "runs")["items"]]
    for name in names:
        wanted = {"WaitingApproval"} if name == GATED_RUN else {"Succeeded"}
        assert wait_for_phase(kubectl, "default", name, wanted, 120)["status"]["phase"] in wanted
    wait_mirrored(mirrored, "default", [n for n in names if n != GATED_RUN])
    return mirrored


@pytest.fixture(scope="module")
def console_url(samples: Mirrored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = ManagedProcess(
        "nofx-console",
        [sys.executable, "-m", "nofx.cli", "console", "--port", str(port),
         "--kubeconfig", str(samples.plane.kubeconfig), "--database-url", samples.postgres.dsn,
         "--region", REGION],
        tmp_path_factory.mktemp("console") / "console.log",
    )  # fmt: skip
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(process, f"{url}/healthz"), 30, "the console")
        yield url
    finally:
        process.stop()
        print(f"\nconsole log: {process.log_path}")


def _answers(process: ManagedProcess, url: str) -> bool:
    process.check_alive()
    try:
        urllib.request.urlopen(url, timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where chromium refuses its sandbox.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("NOFX_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture
def page(browser: Browser, screenshots: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.read().decode())


def test_pages_read_without_javascript(console_url: str, samples: Mirrored) -> None:
    runs = get(f"{console_url}/runs")
    for name in (DAG_RUN, GATED_RUN, "linear-readme", "swarm-license-headers"):
        assert f'href="/runs/default/{name}"' in runs
    failed = get(f"{console_url}/runs?phase=Failed")
    assert "No Runs match on this page" in failed
    run = get(f"{console_url}/runs/default/{DAG_RUN}")
    assert '<svg role="img"' in run and run.count('class="node"') == 6
    assert "verifies" in get(f"{console_url}/runs/default/{DAG_RUN}/audit")
    assert "Name an account" in get(f"{console_url}/usage")
    assert 'href="/registry/Template/default/dag"' in get(f"{console_url}/registry")


def test_the_runs_list_leads_to_a_run_with_its_dag(
    console_url: str, samples: Mirrored, page: Page, screenshots: Path
) -> None:
    page.goto(f"{console_url}/runs")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    page.get_by_label("Phase").select_option("WaitingApproval")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    page.goto(f"{console_url}/runs")
    page.screenshot(path=screenshots / "runs.png", full_page=True)
    page.get_by_role("link", name=DAG_RUN, exact=True).click()
    expect(page).to_have_url(f"{console_url}/runs/default/{DAG_RUN}")

    templates = yaml.safe_load_all((REPO / "manifests/samples/base/templates.yaml").read_text())
    plan = next(t for t in templates if t["metadata"]["name"] == "dag")["spec"]
    steps, [report] = plan["steps"], plan["finally"]
    graph = page.get_by_role("img", name=re.compile(f"Steps of Run {DAG_RUN}"))
    nodes = graph.locator("g.node")
    names = sorted(step["name"] for step in [*steps, report])
    assert sorted(nodes.locator("title").all_text_contents()) == names
    edges = {e.replace("->", " ") for e in graph.locator("g.edge title").all_text_contents()}
    wanted = {f"{up} {s['name']}" for s in steps for up in s.get("dependsOn") or []}
    assert edges == {*wanted, f"review {report['name']}"}  # finally after the last step
    for index in range(nodes.count()):
        assert PHASE_COLOURS["Succeeded"] in nodes.nth(index).inner_html()
        expect(nodes.nth(index)).to_contain_text("Succeeded")
    expect(page.locator(".gantt li")).to_have_count(len(names))
    page.screenshot(path=screenshots / "run.png", full_page=True)
    nodes.filter(has_text="review").locator("a").click()
    expect(page).to_have_url(re.compile("#step-review$"))


def test_a_gate_approved_while_its_page_is_open_shows_who_approved(
    console_url: str, samples: Mirrored, page: Page, screenshots: Path
) -> None:
    page.goto(f"{console_url}/runs/default/{GATED_RUN}")
    gates = page.get_by_role("region", name="Approvals")
    expect(gates).to_contain_text("waiting for a person")
    approval = {"spec": {"approvals": [{"step": "publish", "approvedBy": "alice"}]}}
    samples.kubectl("patch", "run", GATED_RUN, "--type", "merge", "-p", json.dumps(approval))
    # No reload: the page's own script brings the change in.
    expect(gates).to_contain_text("alice", timeout=20_000)
    expect(page.locator("h1 .phase")).to_have_text("Succeeded", timeout=30_000)
    page.screenshot(path=screenshots / "run-approved.png", full_page=True)


def test_the_audit_page_verifies_the_chain_and_shows_a_tampered_row(
    console_url: str, samples: Mirrored, page: Page, screenshots: Path
) -> None:
    page.goto(f"{console_url}/runs/default/{DAG_RUN}")
    page.get_by_role("link", name="Audit trail of this Run").click()
    expect(page.locator(".check-ok")).to_contain_text("verifies")
    rows = page.locator("tbody tr")
    expect(page.locator("tbody")).to_contain_text("RunSucceeded")
    assert (
        rows.count() == len(samples.nofx("audit", DAG_RUN, "-n", "default").stdout.splitlines()) - 1
    )
    page.screenshot(path=screenshots / "audit.png", full_page=True)

    [(stream, seq, original)] = samples.sql(
        "SELECT stream, seq, message FROM audit_events"
        " WHERE name = %s AND reason = 'StepSucceeded' AND step = 'review'", DAG_RUN,
    )  # fmt: skip

    def set_message(message: str) -> None:
        with psycopg.connect(samples.postgres.dsn, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # past the append-only trigger
            conn.execute(
                "UPDATE audit_events SET message = %s WHERE stream = %s AND seq = %s",
                (message, stream, seq),
            )

    set_message("nothing to see")
    try:
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text(f"seq {seq}: hash mismatch")
        page.screenshot(path=screenshots / "audit-tampered.png", full_page=True)
    finally:
        set_message(original)
    page.reload()
    expect(page.locator(".check-ok")).to_contain_text("verifies")


def test_a_templates_history_shows_the_change_between_versions(
    console_url: str, samples: Mirrored, page: Page, screenshots: Path
) -> None:
    edit = {"spec": {"description": "Backend, frontend and docs, then one review."}}
    samples.kubectl("patch", "template", "dag", "--type", "merge", "-p", json.dumps(edit))
    page.goto(f"{console_url}/registry")
    page.get_by_role("link", name="dag", exact=True).click()
    wait_until(lambda: _versions(page) == 2, 30, "the Template's second version", interval=1)
    expect(page.locator(".diff-added")).to_contain_text("description: Backend, frontend and docs")
    expect(page.locator(".diff-removed")).to_have_count(1)
    page.screenshot(path=screenshots / "history.png", full_page=True)


def _versions(page: Page) -> int:
    page.reload()
    return page.locator("main table").first.locator("tbody tr").count()


def test_the_usage_page_totals_equal_nofx_usage(
    console_url: str, samples: Mirrored, page: Page, screenshots: Path
) -> None:
    names = [run["metadata"]["name"] for run in samples.kubectl.json("get", "runs")["items"]]
    wait_mirrored(samples, "default", names)
    today = datetime.now(UTC).date().isoformat()
    expected = json.loads(samples.nofx("usage", "--account", ACCOUNT, "--since", today,
                                       "-o", "json").stdout)  # fmt: skip
    assert expected, "the samples were billed"
    page.goto(f"{console_url}/runs")
    page.get_by_role("link", name="Usage").click()
    page.get_by_role("textbox", name="Account").fill(ACCOUNT)
    page.get_by_label("Since").fill(today)
    page.get_by_role("button", name="Show").click()
    shown = [
        row.locator("td").all_text_contents() for row in page.locator("#usage-rows tbody tr").all()
    ]
    assert shown == [
        [
            r["day"],
            r["agent"],
            r["queue"] or "-",
            str(r["attempts"]),
            f"{r['wall_seconds']:.1f}",
            "-" if r["queued_seconds"] is None else f"{r['queued_seconds']:.1f}",
            r["cost"],
            r["currency"],
        ]
        for r in expected
    ]
    by_model = json.loads(samples.nofx("usage", "--account", ACCOUNT, "--since", today,
                                       "--by", "model", "-o", "json").stdout)  # fmt: skip
    tokens = [
        row.locator("td").all_text_contents()
        for row in page.locator("#usage-tokens tbody tr").all()
    ]
    assert tokens == [
        [r["day"], r["agent"], r["model"], str(r["attempts"]), str(r["input_tokens"]),
         str(r["output_tokens"]), str(r["cached_tokens"]), r["cost"], r["currency"]]
        for r in by_model
        if r["model"] is not None
    ]  # fmt: skip
    assert any(row[2] == "claude-sonnet-4" for row in tokens), "the samples report tokens"
    expect(
        page.get_by_role("img", name=f"Cost per day and agent, account {ACCOUNT}")
    ).to_be_visible()
    attempts = sum(r["attempts"] for r in expected)
    expect(page.locator("#usage-totals tbody tr").first.locator("td").first).to_have_text(
        str(attempts)
    )
    page.screenshot(path=screenshots / "usage.png", full_page=True)
