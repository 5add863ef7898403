"""The mirror writer against fakes of its two seams (Store: Postgres, Kube: the API server):
a row Postgres refuses is held back and reported while the rest flows, retried with capped
backoff, and cleared once fixed; connection errors hold nothing back; failed acknowledgements
are offered again by the writer itself; the lag covers every pending entry."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from nofx.api_errors import Conflict
from nofx.mirror.errors import Rejected
from nofx.mirror.folding import ACK_AFTER, LATE_ACKS_PER_SECOND
from nofx.mirror.records import AuditEvent, RunRecord, SpecVersion, UsageRecord
from nofx.mirror.writer import CHECKPOINT_EVERY, MirrorWriter
from nofx.own_writes import OwnWrites

POISON = "poison"  # the fake Postgres refuses any row holding this


class FakeStore:
    def __init__(self) -> None:
        self.events: dict[tuple[str, int], AuditEvent] = {}
        self.versions: list[tuple[str, str]] = []  # (name, spec_hash), in the order written
        self.batches: list[list[str]] = []  # Run names of each write() call
        self.runs: dict[str, RunRecord] = {}  # the latest record of each Run, by name
        self.down = False
        self.refusing = True
        self.registry_checkpoints = 0  # checkpoint_registry() calls that went through
        self.handed = 0  # events handed to write(), stored before or not

    def _check(self, values: Sequence[object]) -> None:
        if self.down:
            raise psycopg.OperationalError("connection refused")
        bad = [value for value in values if self.refusing and POISON in repr(value)]
        if bad:
            raise Rejected(f'value out of range in "{bad[0]}"')

    def write(
        self, events: Sequence[AuditEvent], usage: Sequence[UsageRecord], runs: Sequence[RunRecord]
    ) -> list[datetime]:
        self.batches.append([run.name for run in runs])
        self.handed += len(events)
        self._check([*events, *usage])
        self.runs.update({run.name: run for run in runs})
        new = [event for event in events if (event.name, event.seq) not in self.events]
        for event in new:
            self.events[(event.name, event.seq)] = event
        return [event.at for event in new]

    def record_version(self, version: SpecVersion) -> int | None:
        self._check([version])
        self.versions.append((version.name, version.spec_hash))
        return len(self.versions)

    def record_deletion(self, *args: Any) -> None:
        self._check(list(args))

    def checkpoint_registry(self) -> int:
        self._check([])
        self.registry_checkpoints += 1
        return 0

    def stored(self, name: str) -> list[int]:
        return sorted(seq for run, seq in self.events if run == name)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[str, str, str, str]] = []  # (kind/name, type, reason, message)
        self.failing_patches = 0
        self.patches = 0  # status patches that went through
        self.own_writes = OwnWrites()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found else None

    def patch_status(
        self, plural: str, namespace: str, name: str, status: dict[str, Any], rv: str | None = None
    ) -> dict[str, Any] | None:
        if self.failing_patches:
            self.failing_patches -= 1
            raise RuntimeError("API server unavailable")
        body = self.objects.get((plural, namespace, name))
        if body is None:
            return None
        if rv and rv != body["metadata"]["resourceVersion"]:
            raise Conflict(name)
        body.setdefault("status", {}).update(status)
        body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)
        self.patches += 1
        return copy.deepcopy(body)

    def set_condition(
        self, plural: str, namespace: str, name: str, kind: str, value: str, reason: str, msg: str
    ) -> None:
        status = self.objects[(plural, namespace, name)].setdefault("status", {})
        others = [c for c in status.get("conditions") or [] if c["type"] != kind]
        status["conditions"] = [*others, {"type": kind, "status": value, "reason": reason}]

    def create_event(self, involved: dict[str, Any], kind: str, reason: str, msg: str) -> None:
        self.events.append((f"{involved['kind']}/{involved['name']}", kind, reason, msg))

    def condition(self, plural: str, name: str) -> tuple[str, str] | None:
        status = self.objects[(plural, "team", name)].get("status") or {}
        found = [c for c in status.get("conditions") or [] if c["type"] == "Mirrored"]
        return (found[0]["status"], found[0]["reason"]) if found else None

    def pending(self, name: str) -> list[Any]:
        return self.objects[("runs", "team", name)]["status"]["audit"]["pending"] or []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(seq: int, message: str = "started", age: float = 1.0) -> dict[str, Any]:
    return {
        "type": "event", "seq": seq, "at": (datetime.now(UTC) - timedelta(seconds=age)).isoformat(),
        "reason": "StepStarted", "message": message, "step": "a", "index": None, "attempt": 1,
        "from": None, "to": "Running", "actor": "nofx-operator",
    }  # fmt: skip


class Setup:
    def __init__(self) -> None:
        self.store, self.kube, self.clock = FakeStore(), FakeKube(), Clock()
        self.writer = MirrorWriter(self.store, self.kube, self.clock)  # type: ignore[arg-type]

    def run(self, name: str, *entries: dict[str, Any], phase: str = "Succeeded") -> None:
        """A Run with these outbox entries, in the cluster and offered to the writer. A
        finished one by default: its entries are acknowledged as soon as they are stored."""
        body = {
            "metadata": {"namespace": "team", "name": name, "uid": f"uid-{name}",
                         "resourceVersion": "1", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {},
            "status": {"phase": phase, "account": "acme", "audit": {"nextSeq": len(entries) + 1,
                                                      "pending": list(entries)}},
        }  # fmt: skip
        self.kube.objects[("runs", "team", name)] = body
        self.writer.offer_run(copy.deepcopy(body))

    def agent(self, name: str, spec_hash: str) -> None:
        self.kube.objects[("agents", "team", name)] = {"metadata": {"name": name}}
        self.writer.offer_version(
            SpecVersion(
                "Agent", "team", name, f"uid-{name}", {}, spec_hash, datetime.now(UTC), "alice"
            )
        )

    def flush(self, after: float = 0.0) -> None:
        self.clock.now += after
        self.writer._flush()


@pytest.fixture
def setup() -> Setup:
    return Setup()


def rejected_total(kind: str) -> float:
    return REGISTRY.get_sample_value("nofx_mirror_rejected_total", {"kind": kind}) or 0.0


def test_a_refused_run_is_held_back_and_reported_while_the_others_flow(setup: Setup) -> None:
    before = rejected_total("Run")
    setup.run("good-1", entry(1), entry(2))
    setup.run("bad", entry(1), entry(2, f"{POISON} here"))
    setup.run("good-2", entry(1))
    setup.flush()

    # One batch refused, then Run by Run: the good ones are in and acknowledged.
    assert setup.store.batches == [["good-1", "bad", "good-2"], ["good-1"], ["bad"], ["good-2"]]
    assert setup.store.stored("good-1") == [1, 2] and setup.store.stored("good-2") == [1]
    assert setup.kube.pending("good-1") == [] and setup.kube.pending("good-2") == []
    # The refused one: nothing written, nothing dropped, told where people look.
    assert setup.store.stored("bad") == []
    assert [e["seq"] for e in setup.kube.pending("bad")] == [1, 2]
    [(about, kind, reason, message)] = setup.kube.events
    assert (about, kind, reason) == ("Run/bad", "Warning", "MirrorRejected")
    assert "value out of range" in message
    assert setup.kube.condition("runs", "bad") == ("False", "MirrorRejected")
    assert setup.kube.condition("runs", "good-1") is None  # no extra write for healthy Runs
    assert rejected_total("Run") == before + 1


def test_a_refused_run_is_retried_alone_with_capped_backoff_and_reported_once(
    setup: Setup,
) -> None:
    before = rejected_total("Run")
    setup.run("bad", entry(1, POISON))
    setup.flush()
    attempts = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # seconds until each retry
    for delay in attempts:
        setup.run("other", entry(1))  # batches keep flowing meanwhile, without it
        setup.flush(after=delay - 0.5)
        assert setup.store.batches[-1] == ["other"]
        setup.flush(after=0.5)
        assert setup.store.batches[-1] == ["bad"]
    assert len([b for b in setup.store.batches if b == ["bad"]]) == 1 + len(attempts)
    assert len(setup.kube.events) == 1  # the same problem is not reported again
    assert rejected_total("Run") == before + 1  # one object held back


def test_a_fixed_run_is_written_and_its_condition_goes_true(setup: Setup) -> None:
    setup.run("bad", entry(1, POISON))
    setup.flush()
    # Someone corrects the entry in the Run's status; no watch event reaches the writer.
    setup.kube.objects[("runs", "team", "bad")]["status"]["audit"]["pending"] = [entry(1)]
    setup.flush(after=1.0)
    assert setup.store.stored("bad") == [1] and setup.kube.pending("bad") == []
    assert setup.kube.condition("runs", "bad") == ("True", "Mirrored")


def test_connection_errors_hold_nothing_back_and_keep_every_run(setup: Setup) -> None:
    setup.store.down = True
    setup.run("a", entry(1))
    setup.run("b", entry(1))
    with pytest.raises(psycopg.OperationalError):
        setup.flush()
    assert setup.kube.events == [] and setup.store.batches == [["a", "b"]]  # not Run by Run
    setup.store.down = False
    setup.flush()
    assert setup.store.stored("a") == [1] and setup.store.stored("b") == [1]
    assert setup.kube.pending("a") == [] and setup.kube.pending("b") == []


def test_a_failed_acknowledgement_is_offered_again_by_the_writer(setup: Setup) -> None:
    setup.run("a", entry(1))
    setup.kube.failing_patches = 1
    setup.flush()
    assert setup.store.stored("a") == [1] and setup.kube.pending("a") != []
    setup.flush(after=0.5)
    assert setup.kube.pending("a") != []  # backoff: not yet
    setup.flush(after=0.5)  # no watch event came: the writer offered it again itself
    assert setup.kube.pending("a") == []
    assert setup.store.batches == [["a"], ["a"]]


def pending_age() -> float:
    return REGISTRY.get_sample_value("nofx_mirror_pending_age_seconds") or 0.0


def test_the_lag_covers_held_back_and_unacknowledged_entries(setup: Setup) -> None:
    setup.run("bad", entry(1, POISON, age=300))
    setup.run("unacknowledged", entry(1, age=120))
    setup.kube.failing_patches = 1
    setup.flush()
    setup.writer._report_lag()
    assert 300 <= pending_age() < 330
    # The refused entry is removed by hand; the acknowledgement fails once more.
    setup.kube.objects[("runs", "team", "bad")]["status"]["audit"]["pending"] = []
    setup.kube.failing_patches = 1
    setup.flush(after=1.0)
    setup.writer._report_lag()
    assert 120 <= pending_age() < 150
    setup.flush(after=2.0)  # the second failure backs off longer
    assert setup.kube.pending("unacknowledged") == []
    setup.writer._report_lag()
    assert pending_age() == 0.0


def test_a_malformed_outbox_entry_is_refused_and_the_others_flow(setup: Setup) -> None:
    broken = entry(1)
    del broken["seq"]
    setup.run("broken", broken)
    setup.run("fine", entry(1))
    setup.flush()
    assert setup.store.stored("fine") == [1]
    [(about, _, reason, message)] = setup.kube.events
    assert (about, reason) == ("Run/broken", "MirrorRejected") and "malformed" in message


def test_a_refused_agent_version_waits_and_other_objects_flow(setup: Setup) -> None:
    before = rejected_total("Agent")
    setup.agent("coder", f"{POISON}-1")
    setup.agent("reviewer", "r-1")
    setup.agent("coder", "c-2")
    setup.flush()
    assert setup.store.versions == [("reviewer", "r-1")]  # coder's v2 waits behind its v1
    assert setup.kube.events[0][:3] == ("Agent/coder", "Warning", "MirrorRejected")
    assert setup.kube.condition("agents", "coder") == ("False", "MirrorRejected")
    assert rejected_total("Agent") == before + 1
    setup.flush(after=0.5)
    assert setup.store.versions == [("reviewer", "r-1")]  # backoff: not yet
    setup.store.refusing = False  # say, a constraint fixed in Postgres
    setup.flush(after=0.5)
    assert setup.store.versions == [("reviewer", "r-1"), ("coder", "poison-1"), ("coder", "c-2")]
    assert setup.kube.condition("agents", "coder") == ("True", "Mirrored")


def test_a_running_runs_stored_entries_wait_for_the_reconcilers_write(setup: Setup) -> None:
    setup.run("busy", entry(1), entry(2), phase="Running")
    setup.flush()
    assert setup.store.stored("busy") == [1, 2]
    # No acknowledgement of its own: the reconciler's next status write drops them.
    assert [e["seq"] for e in setup.kube.pending("busy")] == [1, 2]
    assert setup.writer.stored.keys(("team", "busy"), "uid-busy") == {("event", 1), ("event", 2)}
    setup.writer._report_lag()
    assert pending_age() == 0.0, "stored entries are not late"
    setup.writer.stored.removed(("team", "busy"), "uid-busy", {("event", 1), ("event", 2)})
    setup.flush(after=ACK_AFTER + 1)
    assert setup.kube.patches == 0


def test_an_older_body_does_not_hand_over_entries_that_already_left_the_outbox(
    setup: Setup,
) -> None:
    """Under load the watch lags behind the reconciler: a body from before its write still
    lists entries that were stored and dropped since. Only what is new is handed over."""
    setup.run("busy", entry(1), entry(2), phase="Running")
    setup.flush()
    setup.writer.stored.removed(("team", "busy"), "uid-busy", {("event", 1), ("event", 2)})
    setup.run("busy", entry(1), entry(2), entry(3), phase="Running")  # the older body
    setup.flush()
    assert setup.store.stored("busy") == [1, 2, 3]
    assert setup.store.handed == 3, "events 1 and 2 were handed over once"


def test_stored_entries_no_write_came_for_are_acknowledged_after_a_while(setup: Setup) -> None:
    setup.run("slow", entry(1), phase="Running")
    setup.flush()
    setup.flush(after=ACK_AFTER / 2)
    assert [e["seq"] for e in setup.kube.pending("slow")] == [1]
    setup.flush(after=ACK_AFTER)
    assert setup.kube.pending("slow") == []
    assert setup.store.stored("slow") == [1], "written once: a stored entry is not written again"


def test_late_acknowledgements_are_spread_out_the_longest_waiting_first(setup: Setup) -> None:
    """Thousands of Runs that wait for approvals come due together: their acknowledgements
    go out at LATE_ACKS_PER_SECOND, not in one burst."""
    setup.run("first", entry(1), phase="WaitingApproval")
    setup.flush(after=1.0)
    for n in range(24):
        setup.run(f"r{n}", entry(1), phase="WaitingApproval")
    setup.flush()
    setup.flush(after=ACK_AFTER)
    assert setup.kube.patches == LATE_ACKS_PER_SECOND
    assert setup.kube.pending("first") == [], "the longest waiting went first"
    setup.flush(after=0.5)
    assert setup.kube.patches == LATE_ACKS_PER_SECOND * 1.5
    setup.flush(after=10.0)
    assert setup.kube.patches == 25


def test_a_late_acknowledgement_that_fails_keeps_the_runs_record_whole(setup: Setup) -> None:
    """Written again to be acknowledged again, the Run's row keeps its phase and account."""
    setup.run("slow", entry(1), phase="Running")
    setup.flush()
    setup.kube.failing_patches = 1
    setup.flush(after=ACK_AFTER)
    setup.flush(after=1.0)
    assert setup.kube.pending("slow") == []
    assert setup.store.batches == [["slow"], ["slow"]]
    record = setup.store.runs["slow"]
    assert (record.phase, record.account) == ("Running", "acme")


def test_registry_heads_are_signed_once_a_minute_and_a_failure_waits_its_turn(
    setup: Setup,
) -> None:
    setup.flush()
    assert setup.store.registry_checkpoints == 0
    setup.flush(after=CHECKPOINT_EVERY)
    setup.flush(after=1)
    assert setup.store.registry_checkpoints == 1
    setup.store.down = True
    with pytest.raises(psycopg.OperationalError):
        setup.flush(after=CHECKPOINT_EVERY)
    setup.store.down = False
    setup.flush(after=1)
    assert setup.store.registry_checkpoints == 1
    setup.flush(after=CHECKPOINT_EVERY)
    assert setup.store.registry_checkpoints == 2
