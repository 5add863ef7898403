"""The Run watch: what it holds of other Runs for the reconcilers (a parent's children, a tree's
size, a Schedule's Runs), which changes it tells, and how a standby replica tells nothing until
it becomes active."""

from __future__ import annotations

from typing import Any, cast

from nofx.api.common import API_VERSION
from nofx.api.schedule import SCHEDULE_LABEL
from nofx.apiserver import ApiServer
from nofx.builders.labels import PARENT_LABEL, ROOT_LABEL
from nofx.reconcilers.run_watch import RunWatch


def run(
    name: str,
    version: str = "1",
    *,
    parent: str | None = None,
    root: str | None = None,
    schedule: str | None = None,
    phase: str | None = None,
    namespace: str = "ns",
) -> dict[str, Any]:
    labels, owners = {}, []
    if parent:
        labels[PARENT_LABEL] = parent
        owners.append({"apiVersion": API_VERSION, "kind": "Run", "name": parent})
    if root:
        labels[ROOT_LABEL] = root
    if schedule:
        labels[SCHEDULE_LABEL] = schedule
        owners.append({"apiVersion": API_VERSION, "kind": "Schedule", "name": schedule})
    metadata = {"namespace": namespace, "name": name, "resourceVersion": version}
    metadata |= {"labels": labels, "ownerReferences": owners}
    return {"metadata": metadata, "spec": {}, "status": {"phase": phase} if phase else {}}


def watch(*namespaces: str) -> tuple[RunWatch, list[tuple[str, str]]]:
    runs, told = RunWatch(None, namespaces), []
    runs.on_change = lambda kind, body: told.append((kind, body["metadata"]["name"]))
    return runs, told


def test_it_holds_each_parents_children_each_trees_size_and_each_schedules_runs() -> None:
    runs, told = watch()
    runs.listed(
        "",
        [
            run("top"),
            run("c1", parent="top", root="u-top", phase="Running"),
            run("c2", parent="top", root="u-top"),
            run("n1", parent="c1", root="u-top"),
            run("s1", schedule="nightly", phase="Succeeded"),
        ],
    )
    assert sorted(c.name for c in runs.children_of("ns", "top")) == ["c1", "c2"]
    assert [c.phase for c in runs.children_of("ns", "top") if c.name == "c1"] == ["Running"]
    assert runs.tree_size("ns", "u-top") == 3 and runs.tree_size("ns", None) == 0
    assert [(r.name, r.phase) for r in runs.scheduled_runs("ns", "nightly")] == [
        ("s1", "Succeeded")
    ]
    assert len(told) == 5, "a first list tells every Run"
    runs.changed("", "MODIFIED", run("c1", "2", parent="top", root="u-top", phase="Failed"))
    assert {c.name: c.phase for c in runs.children_of("ns", "top")}["c1"] == "Failed"
    runs.changed("", "DELETED", run("c2", parent="top", root="u-top"))
    assert [c.name for c in runs.children_of("ns", "top")] == ["c1"]
    assert runs.tree_size("ns", "u-top") == 2
    assert told[-2:] == [("MODIFIED", "c1"), ("DELETED", "c2")]


def test_a_run_labelled_by_hand_is_not_a_schedules_or_a_parents() -> None:
    runs, _ = watch()
    forged = run("x", schedule="nightly")
    forged["metadata"]["ownerReferences"] = []  # the label, but no owner
    runs.listed("", [forged])
    assert runs.scheduled_runs("ns", "nightly") == ()
    runs.changed("", "MODIFIED", run("x", "2"))
    assert runs.children_of("ns", "top") == []


def test_a_fresh_list_tells_only_runs_that_changed_or_went_in_its_namespace() -> None:
    runs, told = watch("ns", "other")
    runs.listed("ns", [run("a"), run("b"), run("c", parent="a")])
    runs.listed("other", [run("z", namespace="other")])
    told.clear()
    # After a gap: b changed, c was deleted, a did not change.
    runs.listed("ns", [run("a"), run("b", "2")])
    assert sorted(told) == [("ADDED", "b"), ("DELETED", "c")]
    assert runs.children_of("ns", "a") == [], "the deleted child left the index"


def test_standing_by_it_holds_but_tells_nothing_then_tells_all_from_a_fresh_list() -> None:
    class Server:
        def request(self, method: str, path: str, query: dict[str, str]) -> dict[str, Any]:
            assert (method, path) == ("GET", "/apis/nofx.dev/v1alpha1/runs")
            return {"items": [run("a", "3"), run("b", "1")], "metadata": {}}

    runs, told = RunWatch(cast(ApiServer, Server())), []
    runs.on_change = lambda kind, body: told.append((kind, body["metadata"]["name"]))
    runs.set_handling(False)
    runs.listed("", [run("a", "2", parent="p")])
    assert told == [] and [c.name for c in runs.children_of("ns", "p")] == ["a"]
    runs.set_handling(True)
    assert told == [("ADDED", "a"), ("ADDED", "b")]
    assert [c.name for c in runs.children_of("ns", "p")] == ["a"], "a told list is not held"
