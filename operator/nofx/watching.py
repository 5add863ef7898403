"""List, then watch from where the list left off, for ever: one kind of object as plain JSON,
in a thread of its own, with no client models and no Kopf handler. Every watch of the operator
but the Schedules' and Kueue's Workloads' uses it: Kopf's processing of each event (a third of
the operator's CPU when it handled Jobs) bought nothing that the reconcilers need.

A watch the API server ends (after WATCH_SECONDS, or with 410 Gone when its resourceVersion is
too old) is resumed or listed afresh; a failing one (RBAC not yet granted, the API server away)
is retried with a doubling delay, and says so in the log."""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from nofx.apiserver import ApiServer, decode

log = logging.getLogger("nofx.watching")

WATCH_SECONDS = 300  # the API server ends each watch after this long; it resumes where it was
RETRY_SECONDS = 1.0  # after a failed list, watch or handler; doubled while it keeps failing
MAX_RETRY_SECONDS = 60.0
Key = tuple[str, str]  # (namespace, name)


def retry_delay(failures: int) -> float:
    """How long to wait after this many failures in a row (1 or more)."""
    return float(min(RETRY_SECONDS * 2 ** min(failures - 1, 32), MAX_RETRY_SECONDS))


class Followed(Protocol):
    """What a watch tells: the whole list (at the start, and after any gap), then each change.
    scope: the namespace the watch covers ("": every namespace), for what follows one watch
    per namespace."""

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None: ...

    def changed(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        """kind: ADDED, MODIFIED or DELETED."""


class Gone(Exception):
    """The watch's resourceVersion is too old: list again."""


class Watch:
    def __init__(
        self,
        server: ApiServer,
        path: str,
        query: dict[str, str],
        followed: Followed,
        what: str,
        scope: str = "",
    ) -> None:
        self.server, self.path, self.query = server, path, query
        self.followed, self.what, self.scope = followed, what, scope
        self.stopped = threading.Event()
        self.failures = 0  # in a row: 0 once a list succeeds
        self.lists = 0  # how many times it listed: more than once means a gap it recovered from
        self.listed_once = threading.Event()  # what it follows holds the whole picture
        self._thread = threading.Thread(target=self._follow, daemon=True, name=what)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _follow(self) -> None:
        while not self.stopped.is_set():
            try:
                version = self._list()
                self.failures = 0
                while not self.stopped.is_set():
                    version = self._watch(version)
            except Gone:
                continue
            except Exception as error:
                self.failures += 1
                delay = retry_delay(self.failures)
                log.warning(
                    "the %s watch failed; retrying in %.0f s: %s",
                    self.what,
                    delay,
                    error,
                    extra={"failures": self.failures},
                )
                self.stopped.wait(delay)

    def list_now(self) -> list[dict[str, Any]]:
        """Every object the watch covers, as a list of them now says, without following it."""
        items: list[dict[str, Any]] = (
            self.server.request("GET", self.path, query=self.query).get("items") or []
        )
        return items

    def _list(self) -> str:
        body = self.server.request("GET", self.path, query=self.query)
        self.lists += 1
        self.followed.listed(self.scope, body.get("items") or [])
        self.listed_once.set()
        return str(body["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Follows one watch until the server ends it; returns the last resourceVersion."""
        query = {
            **self.query,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        with self.server.stream(self.path, query, read_timeout=WATCH_SECONDS + 30) as lines:
            for line in lines:
                if self.stopped.is_set():
                    break
                if not line:
                    continue
                event = decode(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone
                    raise RuntimeError(obj.get("message") or "watch error")
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.followed.changed(self.scope, kind, obj)
        return version


class Watching:
    """What an object kept up to date by watches (one per namespace, or one for all) starts
    and stops, and whether it tells its handler what they see.

    A full list is told the first time whole; after a gap (410 Gone, an outage) only what
    changed or went away meanwhile, as changes (ADDED, DELETED with the last body held): what
    did not change was told already. Each part says which objects it holds, at which version.

    A replica that stands by keeps its watches, so that it takes over with everything in
    memory, but tells nobody (handling False). On becoming active it tells every object anew
    from a fresh list, as Kopf does when it resumes: what changed meanwhile was told to nobody.
    That list is told only, never held: the watch's own events may be newer than it."""

    watches: list[Watch]
    handling = True

    def changed(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    def held_versions(self, scope: str) -> dict[Key, str]:
        """The resourceVersion of each object held in the scope ("": all)."""
        raise NotImplementedError

    def last_body(self, key: Key) -> dict[str, Any]:
        """What a deletion seen only in a fresh list tells: by default, the name alone."""
        return {"metadata": {"namespace": key[0], "name": key[1]}}

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        # A scope's first list finds nothing held: all of it is told.
        held = self.held_versions(scope)
        present = {(obj["metadata"]["namespace"], obj["metadata"]["name"]) for obj in objects}
        for key in held.keys() - present:
            self.changed(scope, "DELETED", self.last_body(key))
        for obj in objects:
            metadata = obj["metadata"]
            version = held.get((metadata["namespace"], metadata["name"]))
            if version != metadata.get("resourceVersion", ""):
                self.changed(scope, "ADDED", obj)

    def tell(self, kind: str, obj: dict[str, Any]) -> None:
        """Hands one change to the handler; nothing by default."""

    def set_handling(self, now: bool) -> None:
        was, self.handling = self.handling, now
        if now and not was:
            for watch in self.watches:
                for obj in watch.list_now():
                    self.tell("ADDED", obj)

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()

    def is_listed(self) -> bool:
        """Every watch listed once: what this holds is the whole picture, not a part of it."""
        return all(watch.listed_once.is_set() for watch in self.watches)

    def wait_listed(self) -> None:
        for watch in self.watches:
            watch.listed_once.wait()
