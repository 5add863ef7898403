"""Runs as a watch of our own sees them: what the reconcilers read of other Runs (a parent's
child Runs, how many Runs a tree holds, a Schedule's Runs), and a call for each change.

Kopf handled these once: three indexes and two handlers, with Kopf's processing around each of
the half-dozen events of a Run, five of them the echoes of our own writes. This watch decodes
each event's JSON, keeps the few fields the indexes need, and hands the body on (on_change, on
the watch's thread), where the Run reconciler drops its own echoes at once."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nofx.api.common import GROUP, VERSION
from nofx.api.schedule import SCHEDULE_LABEL, schedule_of
from nofx.apiserver import ApiServer
from nofx.builders.labels import PARENT_LABEL, ROOT_LABEL
from nofx.builders.ownership import owning_run
from nofx.builders.scheduled_run import scheduled_time
from nofx.planner.facts import ChildRunObservation
from nofx.scheduling.decide import ScheduledRunView
from nofx.watching import Key as RunKey
from nofx.watching import Watch, Watching

# Called on the watch's thread with each change: ADDED (also for every Run of a first list),
# MODIFIED or DELETED, and the body.
Changed = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class _Seen:
    """What one Run adds to the indexes."""

    version: str  # its resourceVersion: a fresh list tells only Runs that changed
    parent: str | None = None
    child: ChildRunObservation | None = None
    root: str | None = None
    schedule: str | None = None
    scheduled: ScheduledRunView | None = None


class RunWatch(Watching):
    def __init__(self, server: ApiServer | None = None, namespaces: tuple[str, ...] = ()) -> None:
        self.on_change: Changed | None = None
        self._lock = threading.Lock()
        self._runs: dict[RunKey, _Seen] = {}
        self._children: dict[RunKey, dict[str, ChildRunObservation]] = defaultdict(dict)
        self._trees: dict[RunKey, set[str]] = defaultdict(set)
        self._scheduled: dict[RunKey, dict[str, ScheduledRunView]] = defaultdict(dict)
        # server None: nothing is watched (tests fill it through listed and changed).
        self.watches = (
            [Watch(server, _runs_path(ns), {}, self, "Run", ns) for ns in namespaces or ("",)]
            if server is not None
            else []
        )

    # --- what the reconcilers read ---

    def children_of(self, namespace: str, parent: str) -> list[ChildRunObservation]:
        with self._lock:
            return list(self._children.get((namespace, parent), {}).values())

    def tree_size(self, namespace: str, root_uid: str | None) -> int:
        """How many child Runs a tree holds, at every depth (bounded per root Run)."""
        if root_uid is None:
            return 0
        with self._lock:
            return len(self._trees.get((namespace, root_uid), ()))

    def scheduled_runs(self, namespace: str, schedule: str) -> tuple[ScheduledRunView, ...]:
        with self._lock:
            return tuple(self._scheduled.get((namespace, schedule), {}).values())

    # --- what the watch tells ---

    def held_versions(self, scope: str) -> dict[RunKey, str]:
        with self._lock:
            return {k: seen.version for k, seen in self._runs.items() if scope in ("", k[0])}

    def changed(self, scope: str, kind: str, run: dict[str, Any]) -> None:
        metadata = run["metadata"]
        key = (metadata["namespace"], metadata["name"])
        with self._lock:
            before = self._runs.pop(key, None)
            if before is not None:
                self._remove(key, before)
            if kind != "DELETED":
                seen = _seen(run)
                self._runs[key] = seen
                self._add(key, seen)
        if self.handling:
            self.tell(kind, run)

    def tell(self, kind: str, run: dict[str, Any]) -> None:
        if self.on_change is not None:
            self.on_change(kind, run)

    # --- the maps (lock held) ---

    def _add(self, key: RunKey, seen: _Seen) -> None:
        namespace, name = key
        if seen.parent and seen.child:
            self._children[(namespace, seen.parent)][name] = seen.child
        if seen.root:
            self._trees[(namespace, seen.root)].add(name)
        if seen.schedule and seen.scheduled:
            self._scheduled[(namespace, seen.schedule)][name] = seen.scheduled

    def _remove(self, key: RunKey, seen: _Seen) -> None:
        namespace, name = key
        for index, owner in (
            (self._children, seen.parent),
            (self._trees, seen.root),
            (self._scheduled, seen.schedule),
        ):
            if owner is None:
                continue
            held: Any = index.get((namespace, owner))
            if held is None:
                continue
            if isinstance(held, set):
                held.discard(name)
            else:
                held.pop(name, None)
            if not held:
                del index[(namespace, owner)]


def _seen(run: dict[str, Any]) -> _Seen:
    metadata = run["metadata"]
    labels = metadata.get("labels") or {}
    status = run.get("status") or {}
    version = str(metadata.get("resourceVersion", ""))
    parent = owning_run(run) if PARENT_LABEL in labels else None
    child = None
    if parent:
        child = ChildRunObservation(
            name=metadata["name"],
            phase=status.get("phase"),
            outputs=status.get("outputs"),
            message=status.get("message"),
        )
    # Labelled by hand, a Run is not the Schedule's to count or delete: the owner decides.
    schedule = schedule_of(metadata) if SCHEDULE_LABEL in labels else None
    scheduled = None
    if schedule:
        scheduled = ScheduledRunView(
            name=metadata["name"],
            phase=status.get("phase"),
            scheduled_at=scheduled_time(run),
            cancel=bool((run.get("spec") or {}).get("cancel")),
        )
    return _Seen(version, parent, child, labels.get(ROOT_LABEL), schedule, scheduled)


def _runs_path(namespace: str) -> str:
    base = f"/apis/{GROUP}/{VERSION}"
    return f"{base}/namespaces/{namespace}/runs" if namespace else f"{base}/runs"
