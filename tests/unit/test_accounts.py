"""A Run is billed to its namespace's account, pinned once (nofx.api.accounts)."""

from __future__ import annotations

from typing import cast

from nofx.api import RunStatus
from nofx.api.accounts import namespace_account
from nofx.kube import Kube
from nofx.mirror import outbox
from nofx.planner.facts import ChildRunRequest, Decision
from nofx.reconcilers import apply
from tests.unit.builders import Sim, condition, inline, step, view
from tests.unit.fake_kube import FakeKube
from tests.unit.run_harness import NAMESPACE, Harness
from tests.unit.run_harness import step as harness_step


def test_a_namespace_without_the_label_is_an_account_named_like_it() -> None:
    assert namespace_account("team-a", {}) == "team-a"
    assert namespace_account("team-a", {"nofx.dev/account": "acme"}) == "acme"
    assert namespace_account("team-a", {"nofx.dev/account": ""}) == "team-a"


def test_a_run_without_an_account_is_billed_to_its_namespaces() -> None:
    sim = Sim(inline(step("a")))
    sim.set_world(namespace_account="acme")
    sim.decide()
    assert sim.status.account == "acme"
    assert sim.status.phase == "Running"


def test_a_run_naming_another_account_fails_before_anything_runs() -> None:
    sim = Sim(inline(step("a"), account="someone-else"))
    sim.set_world(namespace_account="acme")
    decision = sim.decide()
    assert not decision.create_jobs and sim.status.account is None
    assert sim.status.phase == "Failed"
    reason, message = condition(sim.status, "Succeeded")[1:]
    assert reason == "AccountMismatch"
    assert "spec.account 'someone-else'" in message and "namespace team-a ('acme'" in message


def test_relabelling_the_namespace_later_changes_nothing() -> None:
    sim = Sim(inline(step("a"), step("b", "a")))
    sim.set_world(namespace_account="acme")
    sim.decide()
    sim.set_world(namespace_account=None)  # the reconciler reads it only until it is pinned
    sim.succeed("a")
    sim.decide()
    assert sim.status.account == "acme"
    assert sim.requested() == [("b", None, 1)]


def test_a_run_started_before_accounts_were_pinned_keeps_what_its_spec_said() -> None:
    sim = Sim(inline(step("a"), step("b", "a"), account="legacy"))
    sim.set_world(namespace_account="legacy")
    sim.decide()
    sim.status = sim.status.model_copy(update={"account": None})  # as an older operator wrote it
    sim.set_world(namespace_account=None)
    sim.succeed("a")
    sim.decide()
    assert sim.status.account == "legacy"


def test_a_child_run_and_the_usage_rows_carry_the_pinned_account() -> None:
    """Not the parent's spec.account (left out here): what decide() pinned."""
    kube = FakeKube()
    parent = view(inline(step("a")), RunStatus())
    decision = Decision(RunStatus(account="acme"))
    decision.create_child_runs.append(ChildRunRequest("demo-sub", "sub", None, "child", {}))
    apply.create_children(cast(Kube, kube), parent, {"metadata": {}}, decision, {})
    child = kube.objects[("runs", "team-a", "demo-sub")]
    assert child["spec"]["account"] == "acme"
    assert child["metadata"]["labels"]["nofx.dev/account"] == "acme"
    pinned = {"spec": {"account": "other"}, "status": {"account": "acme"}}
    assert outbox.account_of(pinned) == "acme"
    assert outbox.account_of({"spec": {"account": "legacy"}, "status": {}}) == "legacy"


def test_the_reconciler_reads_the_namespace_once_per_run() -> None:
    h = Harness(harness_step("a"), harness_step("b", "a"))
    h.kube.namespaces[NAMESPACE] = {"nofx.dev/account": "acme"}
    h.reconcile()
    h.finish_job(h.job_name("a", 1))
    h.reconcile()
    assert h.kube.called("namespace_labels") == [(NAMESPACE,)]
    assert h.status.account == "acme"
    job = h.kube.objects[("jobs", NAMESPACE, h.job_name("b", 1))]
    assert job["metadata"]["labels"]["nofx.dev/account"] == "acme"
