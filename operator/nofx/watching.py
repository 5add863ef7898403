"""List, then watch from where the list left off, for ever: one kind of object as plain JSON,
in a thread of its own, with no client models and no Kopf handler. The step Job and step Pod
watches of the Run reconciler use it: Kopf's processing of each event (a third of the
operator's CPU when it handled Jobs) buys nothing for objects the operator only reads.

A watch the API server ends (after WATCH_SECONDS, or with 410 Gone when its resourceVersion is
too old) is resumed or listed afresh; a failing one (RBAC not yet granted, the API server away)
is retried with a doubling delay, and says so in the log."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

from nofx.apiserver import ApiServer

log = logging.getLogger("nofx.watching")

WATCH_SECONDS = 300  # the API server ends each watch after this long; it resumes where it was
RETRY_SECONDS = 1.0  # after a failed list or watch; doubled while it keeps failing
MAX_RETRY_SECONDS = 60.0


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
        self._thread = threading.Thread(target=self._follow, daemon=True, name=what)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _follow(self) -> None:
        delay = RETRY_SECONDS
        while not self.stopped.is_set():
            try:
                version = self._list()
                self.failures, delay = 0, RETRY_SECONDS
                while not self.stopped.is_set():
                    version = self._watch(version)
            except Gone:
                continue
            except Exception as error:
                self.failures += 1
                log.warning(
                    "the %s watch failed; retrying in %.0f s: %s",
                    self.what,
                    delay,
                    error,
                    extra={"failures": self.failures},
                )
                self.stopped.wait(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)

    def _list(self) -> str:
        body = self.server.request("GET", self.path, query=self.query)
        self.lists += 1
        self.followed.listed(self.scope, body.get("items") or [])
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
                event = json.loads(line)
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
    and stops."""

    watches: list[Watch]

    def start(self) -> None:
        for watch in self.watches:
            watch.start()

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()
