"""The audit outbox in a Run's status: numbering, usage entries, acknowledgement."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from nofx.api.run import RunStatus
from nofx.changes import AttemptFinished, TokensUsed, Transition
from nofx.mirror import outbox
from nofx.mirror.records import TokenRecord

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
BODY = {
    "metadata": {"uid": "u-1", "namespace": "team", "name": "r"},
    "spec": {},
    "status": {"account": "acme"},
}


def change(step: str | None, to: str, reason: str) -> Transition:
    return Transition(step, None, 1 if step else None, None, to, reason, f"{step} {to}")


def attempt(step: str, number: int) -> AttemptFinished:
    return AttemptFinished(
        step=step, index=None, attempt=number, job_name=f"r-{step}-{number}", agent="coder",
        outcome="Succeeded", wall_seconds=2.5, cost=Decimal("0.025"), currency="USD",
        started_at=NOW, finished_at=NOW, cpu_request="500m", memory_request="1Gi",
    )  # fmt: skip


def test_events_are_numbered_per_run_across_reconciles() -> None:
    status = RunStatus()
    outbox.record(
        status,
        [change("a", "Running", "StepStarted"), change(None, "Running", "RunRunning")],
        [],
        NOW,
        {},
    )
    outbox.record(status, [change("a", "Succeeded", "StepSucceeded")], [attempt("a", 1)], NOW, {})
    assert status.audit is not None and status.audit.next_seq == 4
    pending = status.audit.pending or []
    assert [e.get("seq") for e in pending] == [1, 2, 3, None]
    assert [e["type"] for e in pending] == ["event", "event", "event", "usage"]


def test_nothing_happened_adds_nothing() -> None:
    status = RunStatus()
    outbox.record(status, [], [], NOW, {})
    assert status.audit is None


def test_acknowledge_keeps_entries_added_after_the_write() -> None:
    status = RunStatus()
    outbox.record(status, [change("a", "Running", "StepStarted")], [attempt("a", 1)], NOW, {})
    written = {outbox.entry_key(e) for e in status.audit.pending or []}  # type: ignore[union-attr]
    outbox.record(status, [change("a", "Succeeded", "StepSucceeded")], [], NOW, {})
    remaining = outbox.acknowledge(status.audit.pending or [], written)  # type: ignore[union-attr]
    assert [(e["type"], e.get("seq")) for e in remaining] == [("event", 2)]


def test_entries_become_store_records() -> None:
    status = RunStatus()
    outbox.record(status, [change("a", "Running", "StepStarted")], [attempt("a", 1)], NOW, {})
    events, usage = outbox.to_records(BODY, status.audit.pending or [])  # type: ignore[union-attr]
    [event] = events
    assert (event.stream, event.seq, event.reason, event.step, event.at) == (
        "run/u-1", 1, "StepStarted", "a", NOW,
    )  # fmt: skip
    [record] = usage
    assert (record.account, record.agent, record.cost, record.cpu_request, record.outcome) == (
        "acme", "coder", Decimal("0.025"), "500m", "Succeeded",
    )  # fmt: skip


def test_a_queued_attempts_queue_and_wait_travel_to_its_record() -> None:
    status = RunStatus()
    queued = replace(attempt("a", 1), queue="gold", queued_seconds=42.5)
    outbox.record(status, [], [queued, attempt("b", 1)], NOW, {})
    _, [gold, plain] = outbox.to_records(BODY, status.audit.pending or [])  # type: ignore[union-attr]
    assert (gold.queue, gold.queued_seconds) == ("gold", 42.5)
    assert (plain.queue, plain.queued_seconds) == (None, None)
    assert "queue" not in (status.audit.pending or [])[1]  # type: ignore[union-attr]


def test_tokens_travel_through_the_outbox_to_the_records_in_decimal() -> None:
    used = (
        TokensUsed("sonnet", 1200, 300, 800, Decimal("0.008940")),
        TokensUsed("mini", 10, 0, 0, Decimal("0.0000015")),
    )
    status = RunStatus()
    outbox.record(status, [], [replace(attempt("a", 1), tokens=used)], NOW, {})
    # What the status holds is JSON: counts as numbers, money as decimal strings.
    [entry] = status.audit.pending or []  # type: ignore[union-attr]
    assert entry["tokens"][1] == {
        "model": "mini", "input": 10, "output": 0, "cached": 0, "cost": "0.0000015",
    }  # fmt: skip
    _, [record] = outbox.to_records(BODY, status.audit.pending or [])  # type: ignore[union-attr]
    assert record.tokens == (
        TokenRecord("sonnet", 1200, 300, 800, Decimal("0.008940")),
        TokenRecord("mini", 10, 0, 0, Decimal("0.0000015")),
    )
    assert record.token_cost == Decimal("0.0089415")
    assert record.cost == Decimal("0.025")  # the wall time's, apart
    # An attempt without tokens writes no key at all.
    plain = RunStatus()
    outbox.record(plain, [], [attempt("b", 1)], NOW, {})
    assert "tokens" not in (plain.audit.pending or [])[0]  # type: ignore[union-attr]
    assert outbox.to_records(BODY, plain.audit.pending or [])[1][0].tokens == ()  # type: ignore[union-attr]


STAMPED = {"annotations": {"nofx.dev/created-by": "alice", "nofx.dev/changed-by": "bob"}}


def actors(
    *changes: Transition,
    metadata: dict[str, object] = STAMPED,
    approvers: dict[str, str] | None = None,
) -> list[object]:
    status = RunStatus()
    outbox.record(status, changes, [], NOW, metadata, approvers)
    return [entry["actor"] for entry in status.audit.pending or []]  # type: ignore[union-attr]


def test_the_runs_start_is_its_creators_doing_and_steps_the_operators() -> None:
    started = [change("a", "Running", "StepStarted"), change(None, "Running", "RunRunning")]
    assert actors(*started) == ["nofx-operator", "alice"]


def test_a_cancellation_is_the_doing_of_whoever_last_changed_the_spec() -> None:
    cancelled = Transition(None, None, None, "Running", "Cancelled", "RunCancelled", "cancelled")
    assert actors(cancelled) == ["bob"]
    finished = Transition(None, None, None, "Running", "Succeeded", "RunSucceeded", "done")
    assert actors(finished) == ["nofx-operator"]


def test_without_the_identity_policy_the_creator_is_unknown_not_guessed() -> None:
    unstamped = {"managedFields": [{"manager": "kubectl", "operation": "Update"}]}
    assert actors(change(None, "Running", "RunRunning"), metadata=unstamped) == [None]


def test_an_approved_steps_first_start_is_its_approvers_doing() -> None:
    first = Transition("publish", None, 1, "Waiting", "Running", "StepStarted", "started")
    retry = Transition("publish", None, 2, "Waiting", "Running", "StepStarted", "again")
    other = Transition("build", None, 1, "Pending", "Running", "StepStarted", "started")
    assert actors(first, retry, other, approvers={"publish": "carol"}) == [
        "carol",
        "nofx-operator",
        "nofx-operator",
    ]


def test_an_approved_queued_steps_start_is_when_it_is_queued_not_admitted() -> None:
    queued = Transition("publish", None, 1, "Waiting", "Queued", "StepQueued", "queued")
    admitted = Transition("publish", None, 1, "Queued", "Running", "StepStarted", "admitted")
    evicted = Transition("publish", None, 1, "Running", "Queued", "StepQueued", "evicted")
    assert actors(queued, admitted, evicted, approvers={"publish": "carol"}) == [
        "carol",
        "nofx-operator",
        "nofx-operator",
    ]


def test_a_scheduled_runs_start_is_its_schedules_doing() -> None:
    owned = {
        "ownerReferences": [
            {"apiVersion": "nofx.dev/v1alpha1", "kind": "Schedule", "name": "nightly"}
        ]
    }
    assert actors(change(None, "Running", "RunRunning"), metadata=owned) == ["schedule/nightly"]
    # With the identity policy, whoever created it is named too: an owner reference is only
    # what the creator wrote, so a tenant cannot pass a Run of its own off as the Schedule's.
    stamped = {**owned, "annotations": {"nofx.dev/created-by": "alice"}}
    assert actors(change(None, "Running", "RunRunning"), metadata=stamped) == [
        "schedule/nightly via alice"
    ]
