"""The list-and-watch loop of the operator's own watches: it lists, follows the watch
from the list's resourceVersion, lists again when the server says the version is gone, and
retries a failure with a delay."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from nofx.apiserver import ApiServer
from nofx.watching import Watch


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def listed(self, scope: str, objects: list[dict[str, Any]]) -> None:
        self.seen += [("LISTED", o["metadata"]["name"]) for o in objects]

    def changed(self, scope: str, kind: str, obj: dict[str, Any]) -> None:
        self.seen.append((kind, obj["metadata"]["name"]))


def obj(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


class FakeApiServer:
    """Answers in turn: a list, a watch the server ends with 410 Gone, a list again, a watch
    that ends normally, a watch that fails; then stops the watch."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.watch: Watch | None = None
        self.lists = [
            {"items": [obj("a", "9")], "metadata": {"resourceVersion": "10"}},
            {"items": [obj("c", "19")], "metadata": {"resourceVersion": "20"}},
        ]
        self.watches: list[Any] = [
            [
                {"type": "ADDED", "object": obj("b", "11")},
                "",  # a keep-alive blank line
                {"type": "BOOKMARK", "object": obj("", "12")},
                {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
            ],
            [{"type": "DELETED", "object": obj("c", "21")}],
            RuntimeError("the API server went away"),
        ]

    def request(self, method: str, path: str, query: dict[str, str]) -> Any:
        self.calls.append((path, query))
        return self.lists.pop(0)

    @contextmanager
    def stream(self, path: str, query: dict[str, str], read_timeout: float) -> Iterator[Any]:
        self.calls.append((path, query))
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            assert self.watch is not None
            self.watch.stop()
            raise answer
        yield iter(event if isinstance(event, str) else json.dumps(event) for event in answer)


def test_it_lists_follows_and_lists_again_when_its_version_is_gone() -> None:
    kube, seen = FakeApiServer(), Recorder()
    watch = Watch(cast(ApiServer, kube), "/api/v1/pods", {"labelSelector": "x=y"}, seen, "test")
    kube.watch = watch
    assert not watch.listed_once.is_set()
    watch._follow()
    assert seen.seen == [("LISTED", "a"), ("ADDED", "b"), ("LISTED", "c"), ("DELETED", "c")]
    queries = [query for _, query in kube.calls]
    assert [q.get("watch") for q in queries] == [None, "true", None, "true", "true"]
    assert [q.get("resourceVersion") for q in queries] == [None, "10", None, "20", "21"]
    assert all(q["labelSelector"] == "x=y" for q in queries)
    assert watch.failures == 1, "the failure was counted, and the watch stopped when told"
    assert watch.lists == 2 and watch.listed_once.is_set()
