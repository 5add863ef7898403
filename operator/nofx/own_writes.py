"""Our own writes, recognised when their watch events come back, so they are not reconciled
again; and the newest body we know of each object, so that a pass triggered by something else
(a finished Job, a timer) need not read it from the API server first.

A write's watch event often comes before its response does (the API server sends both at once,
and the response's body is read and decoded after). So a write is announced before it is sent
(write), and an event of the object that comes meanwhile is held until the write is recorded
or failed: taken for someone else's change, it cost a reconcile that found nothing to do, for
most status writes under load."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Key = tuple[str, str, str]  # (plural, namespace, name)


class OwnWrites:
    """resourceVersions this process wrote whose watch events have not come back yet. Such an
    event only echoes a write whose effects the writer knew: reconciling it again would only
    cost (an API read, often a conflict)."""

    KEEP = 8  # per object: Kopf may batch several quick events into the last one
    # Bodies kept, the most recently written or seen first: the Runs in flight. A body that
    # fell out is read again; one that went stale costs a conflict, then a read.
    KEEP_BODIES = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[Key, list[str]] = {}
        self._bodies: OrderedDict[Key, dict[str, Any]] = OrderedDict()
        self._writing_now: dict[Key, int] = {}  # writes sent whose response has not come yet
        # Events held while a write is in flight: their version, and what to call with whether
        # they echo a write of ours.
        self._held: dict[Key, list[tuple[str, Callable[[bool], None]]]] = {}

    def write(
        self,
        plural: str,
        namespace: str,
        name: str,
        send: Callable[[], dict[str, Any] | None],
        *,
        record: bool = True,
    ) -> dict[str, Any] | None:
        """Sends a write of ours (send: the object as stored, None if it is gone) and, with
        record, adds it. Events of the object that come before its response are held until
        then, and told after (see echo_or_hold)."""
        with self._writing(plural, namespace, name):
            stored = send()
            if stored is not None and record:
                self.add(plural, stored)
        return stored

    @contextmanager
    def _writing(self, plural: str, namespace: str, name: str) -> Iterator[None]:
        key = (plural, namespace, name)
        with self._lock:
            self._writing_now[key] = self._writing_now.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._writing_now.pop(key) - 1
                if left:
                    self._writing_now[key] = left
                held = [] if left else self._held.pop(key, [])
            for version, tell in held:
                tell(self.is_echo(plural, namespace, name, version))

    def add(self, plural: str, stored: dict[str, Any]) -> None:
        """Records a write, given the object as stored."""
        metadata = stored["metadata"]
        key = (plural, metadata["namespace"], metadata["name"])
        with self._lock:
            versions = self._versions.setdefault(key, [])
            versions.append(metadata["resourceVersion"])
            del versions[: -self.KEEP]
            self._keep(key, stored)

    def seen(self, plural: str, body: dict[str, Any]) -> None:
        """A watch event that is not our echo: someone else's newer write."""
        metadata = body["metadata"]
        with self._lock:
            self._keep((plural, metadata["namespace"], metadata["name"]), body)

    def latest(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The newest body written or seen, if still kept."""
        with self._lock:
            return self._bodies.get((plural, namespace, name))

    def _keep(self, key: Key, body: dict[str, Any]) -> None:
        # Without managedFields: nothing here reads them, and the status writer's entry lists
        # every field of the status (the pinned specs' too), often most of a body's size.
        metadata = body["metadata"]
        if "managedFields" in metadata:
            body = {**body, "metadata": {k: v for k, v in metadata.items() if k != "managedFields"}}
        self._bodies[key] = body
        self._bodies.move_to_end(key)
        while len(self._bodies) > self.KEEP_BODIES:
            self._bodies.popitem(last=False)

    def is_echo(self, plural: str, namespace: str, name: str, resource_version: str) -> bool:
        """True once for each version we wrote. Events come in order, so the writes before it
        will never be seen again (skipped, or they came already)."""
        with self._lock:
            return self._take((plural, namespace, name), resource_version)

    def echo_or_hold(
        self,
        plural: str,
        namespace: str,
        name: str,
        resource_version: str,
        later: Callable[[bool], None],
    ) -> bool | None:
        """is_echo, except for an event that comes while a write of the object is in flight:
        None, and later(is_echo) once that write is recorded or failed."""
        key = (plural, namespace, name)
        with self._lock:
            if self._take(key, resource_version):
                return True
            if key not in self._writing_now:
                return False
            self._held.setdefault(key, []).append((resource_version, later))
            return None

    def _take(self, key: Key, resource_version: str) -> bool:
        versions = self._versions.get(key) or []
        if resource_version not in versions:
            return False
        del versions[: versions.index(resource_version) + 1]
        return True

    def forget(self, plural: str, namespace: str, name: str) -> None:
        with self._lock:
            self._versions.pop((plural, namespace, name), None)
            self._bodies.pop((plural, namespace, name), None)
