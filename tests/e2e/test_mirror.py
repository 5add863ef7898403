"""The Postgres mirror with the real operator: an audit trail with valid hash chains, usage that
matches the Pods' own timestamps, nothing lost or doubled through a Postgres outage and an
operator crash, tampering detected, and rollback of a Template to an earlier spec."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from nofx.mirror.store import Store
from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer
from nofx_dev.processes import wait_until

from ..conftest import Kubectl, new_postgres
from .conftest import OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step, template

REGION = "eu-test"


@dataclass
class Mirrored:
    plane: ControlPlane
    kubectl: Kubectl
    postgres: PostgresServer
    operator: OperatorProcess

    def nofx(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "nofx.cli", *args, "--database-url", self.postgres.dsn,
             "--region", REGION],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def sql(self, query: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.postgres.dsn, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()


@pytest.fixture(scope="module")
def mirrored(
    start_plane: Callable[..., ControlPlane], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mirrored]:
    plane = start_plane("mirror-plane")
    postgres = new_postgres()
    postgres.start()
    operator = OperatorProcess(
        plane, tmp_path_factory.mktemp("mirror-operator"), "--standalone",
        "--database-url", postgres.dsn, "--region", REGION,
    )  # fmt: skip
    try:
        kubectl = Kubectl(plane.kubeconfig)
        setup = Mirrored(plane, kubectl, postgres, operator)
        assert "applied" in setup.nofx("db", "migrate").stdout
        assert "up to date" in setup.nofx("db", "migrate").stdout  # safe to run twice
        operator.start()
        yield setup
    finally:
        operator.stop()
        postgres.stop()
        shutil.rmtree(postgres.directory.parent, ignore_errors=True)


def fresh_namespace(kubectl: Kubectl, name: str, account: str | None = None) -> str:
    """A namespace, labelled with its account if one is given (else it is its own)."""
    kubectl("create", "namespace", name)
    if account is not None:
        kubectl("label", "namespace", name, f"nofx.dev/account={account}")
    return name


def wait_mirrored(
    mirrored: Mirrored, namespace: str, names: list[str], timeout: float = 90
) -> None:
    """Until every Run's outbox is empty: Postgres has all its events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = mirrored.kubectl.json("get", "runs", "-n", namespace)["items"]
        by_name = {r["metadata"]["name"]: r for r in runs}
        if all(
            not ((by_name.get(n, {}).get("status") or {}).get("audit") or {}).get("pending")
            for n in names
        ):
            return
        time.sleep(0.5)
    raise AssertionError("the mirror did not catch up")


@pytest.mark.oldest
def test_transitions_in_order_with_a_valid_chain_and_usage_matching_the_pods(
    mirrored: Mirrored,
) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "audit", account="acme")
    apply(
        mirrored.kubectl,
        namespace,
        agent("priced", {"kwok.nofx.dev/duration": "2s"}, pricing={"perHour": "36"}),
        run(
            "audited",
            steps=[step("one", "priced"), step("two", "priced", dependsOn=["one"])],
        ),
    )
    body = wait_for_phase(mirrored.kubectl, namespace, "audited", {"Succeeded", "Failed"})
    assert body["status"]["phase"] == "Succeeded"
    wait_mirrored(mirrored, namespace, ["audited"])

    timeline = json.loads(mirrored.nofx("audit", "audited", "-n", namespace, "-o", "json").stdout)
    reasons = [(e["reason"], e["step"]) for e in timeline]
    assert reasons == [
        ("RunRunning", None),
        ("StepStarted", "one"),
        ("StepSucceeded", "one"),
        ("StepStarted", "two"),
        ("StepSucceeded", "two"),
        ("RunSucceeded", None),
    ]
    assert [e["seq"] for e in timeline] == list(range(1, len(timeline) + 1))
    assert all(e["region"] == REGION for e in timeline)
    assert "verifies" in mirrored.nofx("audit", "verify", "audited", "-n", namespace).stdout

    # Usage: the test's own arithmetic from the Pods' container timestamps times the Agent's rate.
    pods = mirrored.kubectl.json("get", "pods", "-n", namespace, "-l", "nofx.dev/run=audited")
    expected_seconds = 0.0
    for pod in pods["items"]:
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        started = datetime.fromisoformat(terminated["startedAt"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(terminated["finishedAt"].replace("Z", "+00:00"))
        expected_seconds += (finished - started).total_seconds()
    [(seconds, cost, records)] = mirrored.sql(
        "SELECT sum(wall_seconds), sum(cost), count(*) FROM usage_records WHERE account = 'acme'"
    )
    assert records == 2
    assert float(seconds) == pytest.approx(expected_seconds)
    assert Decimal(cost) == pytest.approx(Decimal(str(expected_seconds)) * 36 / 3600)
    usage = json.loads(
        mirrored.nofx("usage", "--account", "acme", "--since", "2020-01-01", "-o", "json").stdout
    )
    assert [(row["agent"], row["attempts"]) for row in usage] == [("priced", 2)]


def test_tampering_with_an_audit_row_is_detected(mirrored: Mirrored) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "tamper")
    apply(mirrored.kubectl, namespace, agent("echo"), run("honest", steps=[step("work")]))
    wait_for_phase(mirrored.kubectl, namespace, "honest", {"Succeeded"})
    wait_mirrored(mirrored, namespace, ["honest"])
    [(stream, seq, original)] = mirrored.sql(
        "SELECT stream, seq, message FROM audit_events"
        " WHERE name = 'honest' AND reason = 'StepSucceeded'"
    )

    def set_message(message: str) -> None:
        with psycopg.connect(mirrored.postgres.dsn, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")  # past the append-only trigger
            conn.execute(
                "UPDATE audit_events SET message = %s WHERE stream = %s AND seq = %s",
                (message, stream, seq),
            )

    set_message("nothing to see")
    result = mirrored.nofx("audit", "verify", "honest", "-n", namespace, check=False)
    assert result.returncode == 1
    assert stream in result.stdout and f"seq {seq}" in result.stdout
    set_message(original)  # the edit, and nothing else, broke the chain
    assert "verifies" in mirrored.nofx("audit", "verify", "honest", "-n", namespace).stdout


def test_rollback_reapplies_an_earlier_template_spec(mirrored: Mirrored) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "registry")
    for description in ("first", "second", "third"):
        apply(
            mirrored.kubectl,
            namespace,
            template("versioned", [step("work")], description=description),
        )
        time.sleep(1.0)
    result = mirrored.nofx("template", "rollback", "versioned", "--to", "1", "-n", namespace,
                           "--kubeconfig", str(mirrored.plane.kubeconfig))  # fmt: skip
    assert "rolled back to version 1" in result.stdout
    spec = mirrored.kubectl.json("get", "template", "versioned", "-n", namespace)["spec"]
    assert spec["description"] == "first"
    deadline = time.monotonic() + 30
    history = ""
    while time.monotonic() < deadline:
        history = mirrored.nofx("template", "history", "versioned", "-n", namespace).stdout
        if len(history.strip().splitlines()) == 5:  # header and four versions
            break
        time.sleep(0.5)
    assert len(history.strip().splitlines()) == 5, history


def test_postgres_outage_and_operator_crash_lose_and_double_nothing(mirrored: Mirrored) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "outage")
    apply(
        mirrored.kubectl,
        namespace,
        agent("steady", {"kwok.nofx.dev/duration": "1s"}),
        template("pair", [step("a", "steady"), step("b", "steady", dependsOn=["a"])]),
    )
    names = [f"outage-{i}" for i in range(20)]
    mirrored.postgres.stop()
    try:
        for name in names:
            apply(mirrored.kubectl, namespace, run(name, templateRef={"name": "pair"}))
        time.sleep(4)
        mirrored.operator.kill()  # with events only in the Runs' outboxes
        mirrored.operator.start()
        time.sleep(30 - 4)
    finally:
        mirrored.postgres.start()
    for name in names:
        assert (
            wait_for_phase(mirrored.kubectl, namespace, name, {"Succeeded", "Failed"})["status"][
                "phase"
            ]
            == "Succeeded"
        )
    wait_mirrored(mirrored, namespace, names, timeout=120)

    for name in names:
        body = mirrored.kubectl.json("get", "run", name, "-n", namespace)
        expected = body["status"]["audit"]["nextSeq"] - 1
        rows = mirrored.sql(
            "SELECT seq FROM audit_events WHERE stream = %s ORDER BY seq",
            f"run/{body['metadata']['uid']}",
        )
        assert [r[0] for r in rows] == list(range(1, expected + 1)), name
        [(attempts,)] = mirrored.sql(
            "SELECT count(*) FROM usage_records WHERE run_uid = %s", body["metadata"]["uid"]
        )
        assert attempts == 2, name
    assert "every hash chain verifies" in mirrored.nofx("audit", "verify").stdout


def test_a_run_deleted_while_postgres_is_down_keeps_its_events(mirrored: Mirrored) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "deleted")
    apply(mirrored.kubectl, namespace, agent("echo"))
    mirrored.postgres.stop()
    try:
        apply(mirrored.kubectl, namespace, run("doomed-2", steps=[step("a")]))
        body = wait_for_phase(mirrored.kubectl, namespace, "doomed-2", {"Succeeded"})
        uid, expected = body["metadata"]["uid"], body["status"]["audit"]["nextSeq"] - 1
        assert "nofx.dev/audit" in body["metadata"]["finalizers"]
        mirrored.kubectl("delete", "run", "doomed-2", "-n", namespace, "--wait=false")
        time.sleep(3)
        held = mirrored.kubectl.json("get", "run", "doomed-2", "-n", namespace)
        assert held["metadata"].get("deletionTimestamp"), "the Run went before its events"
    finally:
        mirrored.postgres.start()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        gone = mirrored.kubectl.run("get", "run", "doomed-2", "-n", namespace, check=False)
        if gone.returncode != 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the Run was never deleted after Postgres came back")
    rows = mirrored.sql("SELECT seq FROM audit_events WHERE stream = %s ORDER BY seq", f"run/{uid}")
    assert [r[0] for r in rows] == list(range(1, expected + 1))


def add_to_outbox(mirrored: Mirrored, namespace: str, name: str, *entries: dict) -> None:
    """Entries the operator itself would never write (an older version, a hand edit)."""
    audit = mirrored.kubectl.json("get", "run", name, "-n", namespace)["status"]["audit"]
    events = [e for e in entries if e["type"] == "event"]
    patch = {"status": {"audit": {
        "nextSeq": audit["nextSeq"] + len(events),
        "pending": [*(audit.get("pending") or []), *entries],
    }}}  # fmt: skip
    mirrored.kubectl("patch", "run", name, "-n", namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps(patch))  # fmt: skip


def metric(mirrored: Mirrored, line_start: str) -> float:
    return mirrored.operator.metric(line_start)


def mirrored_condition(mirrored: Mirrored, namespace: str, name: str) -> dict:
    body = mirrored.kubectl.json("get", "run", name, "-n", namespace)
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Mirrored"), {})


def test_nul_is_stored_faithfully_in_audit_events_and_agent_specs(mirrored: Mirrored) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "nul")
    apply(mirrored.kubectl, namespace, agent("echo", description="before\x00after"),
          run("nul-run", steps=[step("work")]))  # fmt: skip
    body = wait_for_phase(mirrored.kubectl, namespace, "nul-run", {"Succeeded"})
    seq = body["status"]["audit"]["nextSeq"]
    wait_mirrored(mirrored, namespace, ["nul-run"])
    note = {"type": "event", "seq": seq, "at": datetime.now(UTC).isoformat(), "reason": "Note",
            "message": "exit\x00code \u2400", "actor": "someone"}  # fmt: skip
    add_to_outbox(mirrored, namespace, "nul-run", note)
    wait_mirrored(mirrored, namespace, ["nul-run"])

    timeline = json.loads(mirrored.nofx("audit", "nul-run", "-n", namespace, "-o", "json").stdout)
    assert timeline[-1]["message"] == "exit\x00code \u2400"
    assert "verifies" in mirrored.nofx("audit", "verify", "nul-run", "-n", namespace).stdout
    [(stored,)] = mirrored.sql("SELECT message FROM audit_events WHERE reason = 'Note'")
    assert stored == "exit\u24000code \u2400\u2400"  # escaped, as documented in escaping.py

    wait_until(
        lambda: bool(mirrored.sql("SELECT 1 FROM spec_versions WHERE namespace = %s", namespace)),
        30, "the Agent's version in Postgres", interval=0.5,
    )  # fmt: skip
    with Store(mirrored.postgres.dsn, REGION) as store:
        [stored] = store.versions("Agent", namespace, "echo")
    assert stored.spec["description"] == "before\x00after"


def test_a_run_postgres_refuses_is_held_back_and_reported_while_others_flow(
    mirrored: Mirrored,
) -> None:
    namespace = fresh_namespace(mirrored.kubectl, "refused")
    apply(mirrored.kubectl, namespace, agent("echo"), run("refused", steps=[step("work")]))
    wait_for_phase(mirrored.kubectl, namespace, "refused", {"Succeeded"})
    wait_mirrored(mirrored, namespace, ["refused"])
    rejected_before = metric(mirrored, 'nofx_mirror_rejected_total{kind="Run"}')
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    usage = {"type": "usage", "step": "work", "index": None, "attempt": 7,
             "job": "refused-work-7", "agent": "echo", "startedAt": an_hour_ago,
             "finishedAt": an_hour_ago, "wallSeconds": 1.0, "cpu": None, "memory": None,
             "cost": "1e200000", "currency": "USD", "outcome": "Succeeded"}  # fmt: skip
    add_to_outbox(mirrored, namespace, "refused", usage)  # numeric overflows past 131072 digits

    wait_until(
        lambda: mirrored_condition(mirrored, namespace, "refused").get("status") == "False",
        30, "the Mirrored=False condition", interval=0.5,
    )  # fmt: skip
    condition = mirrored_condition(mirrored, namespace, "refused")
    assert condition["reason"] == "MirrorRejected"
    assert "numeric" in condition["message"], condition
    events = mirrored.kubectl.json("get", "events", "-n", namespace, "--field-selector",
                                   "involvedObject.name=refused,reason=MirrorRejected")  # fmt: skip
    [event] = events["items"]
    assert event["type"] == "Warning" and "numeric" in event["message"]
    assert metric(mirrored, 'nofx_mirror_rejected_total{kind="Run"}') == rejected_before + 1
    wait_until(  # the lag counts the held entry, an hour old
        lambda: metric(mirrored, "nofx_mirror_pending_age_seconds") >= 3500, 10, "the lag"
    )

    # Other Runs' rows keep arriving meanwhile; the refused entry stays in its Run's outbox.
    others = [f"flowing-{i}" for i in range(3)]
    apply(mirrored.kubectl, namespace, *(run(name, steps=[step("work")]) for name in others))
    for name in others:
        wait_for_phase(mirrored.kubectl, namespace, name, {"Succeeded"})
    wait_mirrored(mirrored, namespace, others)
    held = mirrored.kubectl.json("get", "run", "refused", "-n", namespace)
    assert [e["cost"] for e in held["status"]["audit"]["pending"]] == ["1e200000"]

    # Corrected by hand: the writer's own retry writes it, and the condition says so.
    fixed = {
        "status": {"audit": {**held["status"]["audit"], "pending": [{**usage, "cost": "0.5"}]}}
    }
    mirrored.kubectl("patch", "run", "refused", "-n", namespace, "--subresource=status",
                     "--type=merge", "-p", json.dumps(fixed))  # fmt: skip
    wait_mirrored(mirrored, namespace, ["refused"], timeout=60)
    wait_until(
        lambda: mirrored_condition(mirrored, namespace, "refused").get("status") == "True",
        10, "the Mirrored=True condition", interval=0.5,
    )  # fmt: skip
    [(cost,)] = mirrored.sql(
        "SELECT cost FROM usage_records WHERE run_name = 'refused' AND attempt = 7"
    )
    assert Decimal(cost) == Decimal("0.5")
