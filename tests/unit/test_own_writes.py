"""The reconciler skips the watch events of its own writes, and only those."""

import time
from types import SimpleNamespace
from typing import Any, cast

import pytest

from nofx.mirror.folding import StoredEntries
from nofx.mirror.writer import MirrorWriter
from nofx.own_writes import OwnWrites
from nofx.reconcilers.apply import AUDIT_FINALIZER
from tests.unit.run_harness import KEY, Harness, step


def stored(name: str, resource_version: str) -> dict[str, object]:
    return {"metadata": {"namespace": "team", "name": name, "resourceVersion": resource_version}}


def test_each_own_write_is_an_echo_once() -> None:
    own = OwnWrites()
    own.add("runs", stored("r1", "10"))
    own.add("runs", stored("r1", "11"))  # a finalizer, then the status, in one reconcile
    assert own.is_echo("runs", "team", "r1", "10")
    assert own.is_echo("runs", "team", "r1", "11")
    assert not own.is_echo("runs", "team", "r1", "11")


def test_writes_of_others_are_not_echoes() -> None:
    own = OwnWrites()
    own.add("runs", stored("r1", "10"))
    assert not own.is_echo("runs", "team", "r1", "12")
    assert not own.is_echo("runs", "team", "r2", "10")
    assert not own.is_echo("templates", "team", "r1", "10")


def test_bodies_are_kept_without_managed_fields() -> None:
    own = OwnWrites()
    body = stored("r1", "10")
    body["metadata"]["managedFields"] = [{"manager": "nofx", "fieldsV1": {"f:status": {}}}]
    body["status"] = {"phase": "Running"}
    own.seen("runs", body)
    kept = own.latest("runs", "team", "r1")
    assert kept is not None and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["resourceVersion"] == "10" and kept["status"] == body["status"]
    assert "managedFields" in body["metadata"], "the caller's body is left as it was"


def test_forget_drops_what_a_deleted_object_left() -> None:
    own = OwnWrites()
    own.add("runs", stored("r1", "10"))
    own.forget("runs", "team", "r1")
    assert not own.is_echo("runs", "team", "r1", "10")


def test_an_echo_drops_the_writes_before_it() -> None:
    """Kopf handles only the last of several quick events: the skipped ones never come."""
    own = OwnWrites()
    for version in ("10", "11", "12"):
        own.add("runs", stored("r1", version))
    assert own.is_echo("runs", "team", "r1", "11")
    assert not own.is_echo("runs", "team", "r1", "10")
    assert own.is_echo("runs", "team", "r1", "12")


def test_only_the_latest_writes_are_kept() -> None:
    own = OwnWrites()
    for version in range(100):
        own.add("runs", stored("r1", str(version)))
    assert not own.is_echo("runs", "team", "r1", "0")
    assert own.is_echo("runs", "team", "r1", "99")


def test_an_event_that_comes_before_the_writes_response_waits_for_it() -> None:
    own, told = OwnWrites(), []

    def send() -> dict[str, object]:
        # The API server sent the watch events before the response was read.
        assert own.echo_or_hold("runs", "team", "r1", "11", told.append) is None
        assert own.echo_or_hold("runs", "team", "r1", "12", told.append) is None
        assert told == []
        return stored("r1", "11")

    own.write("runs", "team", "r1", send)
    assert told == [True, False], "its own write's echo, then someone else's change"
    assert own.echo_or_hold("runs", "team", "r1", "13", told.append) is False, "none in flight"


def test_a_failed_write_tells_what_it_held_as_news() -> None:
    own, told = OwnWrites(), []

    def send() -> dict[str, object]:
        own.echo_or_hold("runs", "team", "r1", "11", told.append)
        raise RuntimeError("conflict")

    with pytest.raises(RuntimeError):
        own.write("runs", "team", "r1", send)
    assert told == [False]


def test_a_write_not_recorded_tells_its_echo_as_news() -> None:
    own, told = OwnWrites(), []

    def send() -> dict[str, object]:
        own.echo_or_hold("runs", "team", "r1", "11", told.append)
        return stored("r1", "11")

    own.write("runs", "team", "r1", send, record=False)
    assert told == [False]


# --- the Run reconciler's own writes --------------------------------------------------------


def woken(h: Harness, body: dict[str, Any]) -> bool:
    """Whether the Run watch's event of this body wakes the Run (told on a stand-in loop)."""
    calls: list[tuple[Any, ...]] = []
    h.reconciler._loop = cast(Any, SimpleNamespace(call_soon_threadsafe=lambda *a: calls.append(a)))
    h.reconciler.run_changed("MODIFIED", body)
    return any(call[3] for call in calls)  # _run_changed(kind, key, wake, parent)


@pytest.mark.usefixtures("events")
def test_the_status_write_is_recorded_and_its_echo_is_skipped_once() -> None:
    h = Harness(step("code"))
    h.reconcile()
    echo = h.kube.get("runs", *KEY)
    assert echo is not None
    assert not woken(h, echo)
    assert woken(h, echo)  # the same event again is news


@pytest.mark.usefixtures("events")
def test_a_status_writes_echo_that_comes_before_its_response_wakes_nothing() -> None:
    h = Harness(step("code"))
    calls: list[tuple[Any, ...]] = []
    h.reconciler._loop = cast(Any, SimpleNamespace(call_soon_threadsafe=lambda *a: calls.append(a)))
    write = h.kube.patch_status

    def echo_first(*args: Any) -> Any:
        stored = write(*args)
        h.reconciler.run_changed("MODIFIED", dict(stored))  # the watch was quicker
        assert calls == [], "held until the write is recorded"
        return stored

    h.kube.patch_status = echo_first  # type: ignore[method-assign]
    h.reconcile()
    assert h.kube.called("patch_status"), "the status was written"
    assert not any(call[3] for call in calls), "its echo woke nobody"


@pytest.mark.usefixtures("events")
def test_a_write_of_someone_else_is_reconciled() -> None:
    h = Harness(step("code"))
    h.reconcile()
    h.kube.patch_spec("runs", *KEY, {"cancel": True})
    edited = h.kube.get("runs", *KEY)
    assert edited is not None
    assert woken(h, edited)


@pytest.mark.usefixtures("events")
def test_a_run_being_deleted_is_never_taken_for_an_echo() -> None:
    h = Harness(step("code"))
    h.reconcile()
    echo = h.kube.get("runs", *KEY)
    assert echo is not None
    echo["metadata"]["deletionTimestamp"] = "2030-01-01T12:00:00Z"
    assert woken(h, echo)


def with_mirror(h: Harness) -> Harness:
    # Only whether there is one matters here, and what it stored: nothing yet.
    h.reconciler.mirror = cast(MirrorWriter, SimpleNamespace(stored=StoredEntries(time.monotonic)))
    return h


@pytest.mark.usefixtures("events")
def test_the_audit_finalizer_and_the_status_are_both_own_writes() -> None:
    h = with_mirror(Harness(step("code")))
    written: list[str] = []
    for method in ("set_finalizers", "patch_status"):
        write = getattr(h.kube, method)

        def spy(*args: Any, write: Any = write) -> Any:
            stored = write(*args)
            written.append(stored["metadata"]["resourceVersion"])
            return stored

        setattr(h.kube, method, spy)
    h.reconcile()
    h.finish_job(h.job_name("code", 1))
    h.reconcile()
    assert h.body["metadata"]["finalizers"] == [AUDIT_FINALIZER]
    assert len(h.kube.called("set_finalizers")) == 1
    assert len(written) == 3
    for version in written:  # in the order they were written, as their events come
        assert h.kube.own_writes.is_echo("runs", *KEY, version)


@pytest.mark.usefixtures("events")
def test_the_audit_finalizer_is_set_before_the_first_audit_events_are_stored() -> None:
    h = with_mirror(Harness(step("code")))
    h.reconcile()
    assert h.body["status"]["audit"]["pending"]
    assert h.body["metadata"].get("finalizers") == [AUDIT_FINALIZER]


def test_the_newest_body_is_kept_for_the_runs_in_flight_only() -> None:
    writes = OwnWrites()
    writes.KEEP_BODIES = 2
    for name in ("a", "b", "c"):
        writes.add("runs", {"metadata": {"namespace": "n", "name": name, "resourceVersion": "1"}})
    assert writes.latest("runs", "n", "a") is None, "the oldest fell out"
    edited = {"metadata": {"namespace": "n", "name": "b", "resourceVersion": "2"}}
    writes.seen("runs", edited)
    assert writes.latest("runs", "n", "b") is edited
    writes.forget("runs", "n", "b")
    assert writes.latest("runs", "n", "b") is None
