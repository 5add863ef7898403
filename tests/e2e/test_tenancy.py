"""Tenancy and identity on the real control plane with the chart's admission policies
(policies/): the audit trail names the user the API server authenticated, whatever a client
writes. Tenants are users with client certificates of their own and a namespaced Role."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from nofx.api.identity import CHANGED_BY, CREATED_BY
from nofx_dev.processes import wait_until

from ..conftest import Kubectl
from .conftest import REPO, wait_for_phase
from .objects import agent, apply, run, step, template
from .test_mirror import Mirrored, fresh_namespace, mirrored, wait_mirrored

__all__ = ["mirrored"]  # the fixture, imported so that this module gets a plane of its own

TENANT_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "Role",
    "metadata": {"name": "nofx-tenant"},
    "rules": [
        {
            "apiGroups": ["nofx.dev"],
            "resources": ["runs", "templates", "agents"],
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        }
    ],
}


@dataclass
class Tenancy:
    mirrored: Mirrored
    namespace: str
    users: dict[str, Kubectl]  # tenants of the namespace, by user name


@pytest.fixture(scope="module")
def tenancy(mirrored: Mirrored) -> Iterator[Tenancy]:
    kubectl = mirrored.kubectl
    kubectl("apply", "-k", str(REPO / "policies"))
    namespace = fresh_namespace(kubectl, "team-a", account="acme")
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(TENANT_ROLE))
    users = {}
    for user in ("alice", "bob"):
        kubectl("create", "rolebinding", f"tenant-{user}", "-n", namespace,
                "--role", "nofx-tenant", "--user", user)  # fmt: skip
        users[user] = Kubectl(mirrored.plane.kubeconfig_for(user))
    wait_until(lambda: _stamped(users["alice"], namespace), 30, "the identity policy to load")
    wait_until(lambda: _refused(users["alice"], namespace), 30, "the accounts policy to load")
    yield Tenancy(mirrored, namespace, users)


def _stamped(kubectl: Kubectl, namespace: str) -> bool:
    return _dry_run(kubectl, namespace).get("annotations", {}).get(CREATED_BY) == "alice"


def _refused(kubectl: Kubectl, namespace: str) -> bool:
    return _create(kubectl, namespace, run("probe", steps=[step("a")], account="x")).returncode != 0


def _create(
    kubectl: Kubectl, namespace: str, body: dict[str, Any], dry_run: bool = True
) -> subprocess.CompletedProcess[str]:
    """kubectl create, as a server-side dry run by default: admission runs, nothing is kept."""
    flags = ["--dry-run=server"] if dry_run else []
    return kubectl.run("create", *flags, "-o", "json", "-n", namespace, "-f", "-",
                       input=json.dumps(body), check=False)  # fmt: skip


def _dry_run(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """The metadata a new Run would get."""
    created = _create(kubectl, namespace, run("probe", steps=[step("a")]))
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout)["metadata"]


def test_a_new_run_carries_the_audit_finalizer_from_its_creation(tenancy: Tenancy) -> None:
    """So the operator makes no write of its own to add it."""
    assert _dry_run(tenancy.users["bob"], tenancy.namespace)["finalizers"] == ["nofx.dev/audit"]


def annotations(kubectl: Kubectl, kind: str, namespace: str, name: str) -> dict[str, str]:
    return kubectl.json("get", kind, name, "-n", namespace)["metadata"].get("annotations") or {}


def audit_rows(tenancy: Tenancy, name: str) -> list[dict[str, object]]:
    output = tenancy.mirrored.nofx("audit", name, "-n", tenancy.namespace, "-o", "json").stdout
    return json.loads(output)


def test_the_runs_creator_is_the_authenticated_user_whatever_the_client_wrote(
    tenancy: Tenancy,
) -> None:
    alice, namespace = tenancy.users["alice"], tenancy.namespace
    forged = run("forged", steps=[step("a")])
    forged["metadata"]["annotations"] = {CREATED_BY: "mallory", CHANGED_BY: "mallory"}
    apply(alice, namespace, agent("echo", {"kwok.nofx.dev/duration": "1s"}), forged)
    assert annotations(alice, "run", namespace, "forged") == {
        CREATED_BY: "alice",
        CHANGED_BY: "alice",
    } | _last_applied(alice, namespace)
    wait_for_phase(tenancy.mirrored.kubectl, namespace, "forged", {"Succeeded"})
    wait_mirrored(tenancy.mirrored, namespace, ["forged"])

    rows = audit_rows(tenancy, "forged")
    started = [r for r in rows if r["reason"] == "RunRunning"]
    assert [r["actor"] for r in started] == ["alice"]
    steps = {r["actor"] for r in rows if r["step"] is not None}
    assert steps == {"nofx-operator"}
    table = tenancy.mirrored.nofx("audit", "forged", "-n", namespace).stdout
    assert "alice" in table and "mallory" not in table

    # Rewriting the annotation later changes nothing either.
    alice("annotate", "run", "forged", "-n", namespace, f"{CREATED_BY}=mallory", "--overwrite")
    assert annotations(alice, "run", namespace, "forged")[CREATED_BY] == "alice"


def _last_applied(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    """kubectl apply keeps its own annotation beside ours."""
    key = "kubectl.kubernetes.io/last-applied-configuration"
    stored = annotations(kubectl, "run", namespace, "forged")
    return {key: stored[key]} if key in stored else {}


def test_whoever_cancels_a_run_is_the_actor_of_its_cancellation(tenancy: Tenancy) -> None:
    alice, bob, namespace = tenancy.users["alice"], tenancy.users["bob"], tenancy.namespace
    apply(alice, namespace, agent("slow", {"kwok.nofx.dev/duration": "60s"}),
          run("cancelled", steps=[step("a", "slow")]))  # fmt: skip
    wait_for_phase(tenancy.mirrored.kubectl, namespace, "cancelled", {"Running"})
    bob("patch", "run", "cancelled", "-n", namespace, "--type", "merge",
        "-p", '{"spec": {"cancel": true}}')  # fmt: skip
    wait_for_phase(tenancy.mirrored.kubectl, namespace, "cancelled", {"Cancelled"})
    wait_mirrored(tenancy.mirrored, namespace, ["cancelled"])
    actors = {r["reason"]: r["actor"] for r in audit_rows(tenancy, "cancelled") if not r["step"]}
    assert (actors["RunRunning"], actors["RunCancelled"]) == ("alice", "bob")


def test_template_history_names_who_changed_each_version(tenancy: Tenancy) -> None:
    alice, bob, namespace = tenancy.users["alice"], tenancy.users["bob"], tenancy.namespace
    apply(alice, namespace, template("edited", [step("a")], description="first"))
    time.sleep(0.5)  # two distinct versions, not one coalesced watch event
    apply(bob, namespace, template("edited", [step("a")], description="second"))
    history = ""

    def two_versions() -> bool:
        nonlocal history
        history = tenancy.mirrored.nofx("template", "history", "edited", "-n", namespace).stdout
        return len(history.strip().splitlines()) == 3  # header and two versions

    wait_until(two_versions, 30, "two Template versions in the mirror")
    changed_by = [line.split()[-1] for line in history.strip().splitlines()[1:]]
    assert changed_by == ["alice", "bob"], history


# --- accounts: a Run is billed to its namespace's account ---


def test_a_tenant_cannot_bill_another_account_nor_relabel_the_namespace(tenancy: Tenancy) -> None:
    alice, namespace = tenancy.users["alice"], tenancy.namespace
    stolen = _create(alice, namespace, run("stolen", steps=[step("a")], account="someone-else"))
    assert stolen.returncode != 0
    assert "spec.account: someone-else is not the account of namespace team-a (acme" in (
        stolen.stderr
    )
    relabel = alice.run("label", "namespace", namespace, "nofx.dev/account=someone-else",
                        "--overwrite", check=False)  # fmt: skip
    assert relabel.returncode != 0 and "forbidden" in relabel.stderr
    # The namespace's own account may be named; it is what leaving it out means.
    assert (
        _create(alice, namespace, run("named", steps=[step("a")], account="acme")).returncode == 0
    )


def test_a_child_run_of_another_account_is_impossible(tenancy: Tenancy) -> None:
    """Whether the operator or a tenant writes it: a child Run is a Run like any other."""
    alice, namespace = tenancy.users["alice"], tenancy.namespace
    forged_child = run("forged-child", steps=[step("a")], account="someone-else")
    forged_child["metadata"]["labels"] = {"nofx.dev/parent-run": "billed", "nofx.dev/depth": "1"}
    assert _create(alice, namespace, forged_child).returncode != 0

    sub = {"name": "sub", "childRun": {"templateRef": {"name": "child"}}}
    apply(alice, namespace, agent("echo", {"kwok.nofx.dev/duration": "1s"}),
          template("child", [step("work")]), run("parent", steps=[sub]))  # fmt: skip
    wait_for_phase(tenancy.mirrored.kubectl, namespace, "parent", {"Succeeded"})
    children = tenancy.mirrored.kubectl.json(
        "get", "runs", "-n", namespace, "-l", "nofx.dev/parent-run=parent"
    )["items"]
    assert [(c["spec"]["account"], c["status"]["account"]) for c in children] == [("acme", "acme")]


def test_a_run_is_billed_to_its_namespaces_account_and_relabelling_keeps_history(
    tenancy: Tenancy,
) -> None:
    alice, namespace = tenancy.users["alice"], tenancy.namespace
    kubectl, mirrored = tenancy.mirrored.kubectl, tenancy.mirrored
    apply(alice, namespace, agent("echo", {"kwok.nofx.dev/duration": "1s"}),
          run("billed", steps=[step("a")]))  # fmt: skip
    body = wait_for_phase(kubectl, namespace, "billed", {"Succeeded"})
    assert body["status"]["account"] == "acme" and "account" not in body["spec"]
    assert "acme" in kubectl("get", "run", "billed", "-n", namespace)  # the ACCOUNT column

    kubectl("label", "namespace", namespace, "nofx.dev/account=acme-eu", "--overwrite")
    try:
        apply(alice, namespace, run("billed-later", steps=[step("a")]))
        later = wait_for_phase(kubectl, namespace, "billed-later", {"Succeeded"})
        assert later["status"]["account"] == "acme-eu"
        wait_mirrored(mirrored, namespace, ["billed", "billed-later"])
        assert kubectl.json("get", "run", "billed", "-n", namespace)["status"]["account"] == "acme"
        for account, name in (("acme", "billed"), ("acme-eu", "billed-later")):
            rows = mirrored.sql(
                "SELECT DISTINCT account FROM usage_records WHERE run_name = %s", name
            )
            assert rows == [(account,)]
    finally:
        kubectl("label", "namespace", namespace, "nofx.dev/account=acme", "--overwrite")


# --- agent access: who may create Agents may not run Pods as anyone or read any Secret ---


SECRET = "s3cret-7f9c1e"  # a Secret's value, to be found nowhere else


def _agent_with(service_account: str | None, secret: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if service_account:
        spec["serviceAccountName"] = service_account
    if secret:
        spec["env"] = [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "t"}}}
        ]
    return agent("privileged", {"kwok.nofx.dev/duration": "1s"}, **spec)


def test_agents_use_only_the_service_accounts_and_secrets_their_namespace_allows(
    tenancy: Tenancy,
) -> None:
    alice, namespace, kubectl = tenancy.users["alice"], tenancy.namespace, tenancy.mirrored.kubectl
    kubectl("create", "serviceaccount", "deployer", "-n", namespace)  # powerful, not for Agents
    kubectl("create", "serviceaccount", "ci-bot", "-n", namespace)
    for name in ("db-password", "model-key"):
        kubectl("create", "secret", "generic", name, "-n", namespace, f"--from-literal=t={SECRET}")
    kubectl("annotate", "namespace", namespace, "nofx.dev/agent-service-accounts=ci-bot",
            "nofx.dev/agent-secrets=model-key")  # fmt: skip

    as_deployer = _create(alice, namespace, _agent_with("deployer", None))
    assert as_deployer.returncode != 0
    assert "spec.serviceAccountName: ServiceAccount deployer is not allowed for Agents in " \
        "namespace team-a" in as_deployer.stderr  # fmt: skip
    reads_db = _create(alice, namespace, _agent_with(None, "db-password"))
    assert reads_db.returncode != 0
    assert "spec: Secret db-password is not allowed for Agents in namespace team-a" in (
        reads_db.stderr
    )
    # Nor can the tenant get there another way: it may not create Pods or read Secrets itself.
    for verb, resource in (("create", "pods"), ("get", "secrets"), ("create", "rolebindings")):
        answer = alice.run("auth", "can-i", verb, resource, "-n", namespace, check=False)
        assert answer.stdout.strip() == "no"

    allowed = _create(alice, namespace, _agent_with("ci-bot", "model-key"), dry_run=False)
    assert allowed.returncode == 0, allowed.stderr
    apply(alice, namespace, run("privileged-run", steps=[step("a", "privileged")]))
    body = wait_for_phase(kubectl, namespace, "privileged-run", {"Succeeded"})
    job = kubectl.json("get", "job", body["status"]["steps"][0]["jobName"], "-n", namespace)
    pod = job["spec"]["template"]["spec"]
    assert (pod["serviceAccountName"], pod["automountServiceAccountToken"]) == ("ci-bot", False)

    # The value of the Secret never leaves it: not in status, Events, the log or Postgres.
    wait_mirrored(tenancy.mirrored, namespace, ["privileged-run"])
    seen = {
        "the Run": kubectl("get", "run", "privileged-run", "-n", namespace, "-o", "json"),
        "Events": kubectl("get", "events", "-n", namespace, "-o", "json"),
        "the operator's log": tenancy.mirrored.operator.log_path.read_text(),
        "Postgres": json.dumps(_every_row(tenancy.mirrored), default=str),
    }
    assert [where for where, text in seen.items() if SECRET in text] == []


def _every_row(mirrored: Mirrored) -> list[tuple]:
    tables = mirrored.sql(
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
    )
    assert tables, "the mirror's tables"
    return [
        row
        for schema, table in tables
        for row in mirrored.sql(f'SELECT * FROM "{schema}"."{table}"')
    ]


# --- approvals name the user the API server authenticated ---


def test_an_approval_is_given_by_whoever_the_api_server_authenticated(tenancy: Tenancy) -> None:
    alice, bob, namespace = tenancy.users["alice"], tenancy.users["bob"], tenancy.namespace
    gated = [step("build"), step("publish", dependsOn=["build"], approval={"message": "ok?"})]
    apply(alice, namespace, agent("echo", {"kwok.nofx.dev/duration": "1s"}),
          run("gated", steps=gated))  # fmt: skip
    wait_for_phase(tenancy.mirrored.kubectl, namespace, "gated", {"WaitingApproval"})

    forged = {"spec": {"approvals": [{"step": "publish", "approvedBy": "the-cto"}]}}
    patch = bob.run("patch", "run", "gated", "-n", namespace, "--type", "merge",
                    "-p", json.dumps(forged), check=False)  # fmt: skip
    assert patch.returncode != 0
    assert "spec.approvals: approvedBy must be you, bob, as the API server authenticated you; " \
        "not the-cto (step publish)" in patch.stderr  # fmt: skip

    approved = subprocess.run(
        [sys.executable, "-m", "nofx.cli", "approve", "gated", "-n", namespace,
         "--step", "publish", "--kubeconfig", str(bob.kubeconfig)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "approved by bob" in approved.stdout, approved.stderr
    wait_for_phase(tenancy.mirrored.kubectl, namespace, "gated", {"Succeeded"})
    wait_mirrored(tenancy.mirrored, namespace, ["gated"])
    started = {
        r["step"]: r["actor"] for r in audit_rows(tenancy, "gated") if r["reason"] == "StepStarted"
    }
    assert started == {"build": "nofx-operator", "publish": "bob"}


# --- evidence: a signed bundle an auditor checks offline ---


def test_an_evidence_bundle_of_a_run_verifies_offline_and_names_what_was_changed(
    tenancy: Tenancy, tmp_path: Path
) -> None:
    """The gated Run of the test above: who created it, who approved, signed."""
    wait_for_phase(tenancy.mirrored.kubectl, tenancy.namespace, "gated", {"Succeeded"})
    private, public = tmp_path / "signing.pem", tmp_path / "signing.pub.pem"
    key = Ed25519PrivateKey.generate()
    private.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    out = tmp_path / "bundle"
    kubeconfig = str(tenancy.mirrored.plane.kubeconfig)
    for name in ("gated", "privileged-run"):
        exported = tenancy.mirrored.nofx(
            "evidence", "export", "--run", name, "-n", tenancy.namespace,
            "--signing-key", str(private), "--out", str(out), "--kubeconfig", kubeconfig,
        )  # fmt: skip
        assert "wrote" in exported.stdout
    # The Run whose Agent reads a Secret: its value is not in the bundle either.
    assert not [path for path in out.rglob("*.json") if SECRET in path.read_text()]
    verified = subprocess.run(
        [sys.executable, "-m", "nofx.cli", "evidence", "verify", str(out), "--key", str(public)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0 and "2 Run(s) verified, 0 problem(s)" in verified.stdout

    [folder] = [path.parent for path in out.rglob("audit.json") if "gated" in path.parent.name]
    envelope = json.loads((folder / "statement.dsse.json").read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    assert predicate["run"]["createdBy"] == "alice"
    assert predicate["approvals"][0]["approvedBy"] == "bob"
    assert predicate["approvals"][0]["stepStartedBy"] == "bob"
    assert predicate["auditTrail"]["verification"][0].startswith("the chain verifies: ")

    rows = json.loads((folder / "audit.json").read_text())
    (folder / "audit.json").write_text(json.dumps(rows[:-1]))  # the newest row removed
    tampered = subprocess.run(
        [sys.executable, "-m", "nofx.cli", "evidence", "verify", str(out), "--key", str(public)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert tampered.returncode == 1 and "not the file the statement signed" in tampered.stdout
