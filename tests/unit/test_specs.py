"""The Agent and Template watches: specs validated once per change, invalid ones known but
None, and their handler called in order, only once what it reads is whole."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from nofx import watching
from nofx.api.agent import AgentSpec
from nofx.reconcilers.specs import Specs


def agent(name: str, image: str | None = "ghcr.io/nofx/coder:1", version: str = "1") -> Any:
    spec = {"image": image} if image else {"nope": True}
    metadata = {"namespace": "ns", "name": name, "resourceVersion": version, "uid": f"u-{name}"}
    return {"metadata": metadata, "spec": spec}


class Handler:
    """Records what the handler saw (on the watch's handler thread); wait() for a count."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.seen: list[tuple[str, str]] = []
        self.bodies: list[dict[str, Any]] = []
        self.fail_on = fail_on
        self._changed = threading.Condition()

    def __call__(self, kind: str, body: dict[str, Any]) -> None:
        with self._changed:
            self.seen.append((kind, body["metadata"]["name"]))
            self.bodies.append(body)
            self._changed.notify_all()
        if body["metadata"]["name"] == self.fail_on:
            raise RuntimeError("the API server is away")

    def wait(self, count: int) -> list[tuple[str, str]]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.seen) >= count, 2), self.seen
        return self.seen


def test_it_holds_valid_specs_and_knows_invalid_ones() -> None:
    specs = Specs(AgentSpec, "agents")
    specs.listed("", [agent("coder"), agent("broken", image=None)])
    assert list(specs.valid("ns")) == ["coder"]
    assert specs.of("ns")["broken"] is None and specs.of("elsewhere") == {}
    assert isinstance(specs.valid("ns")["coder"], AgentSpec)
    specs.changed("", "DELETED", agent("coder"))
    assert specs.valid("ns") == {}


def test_the_handler_waits_until_ready_then_sees_every_change_in_order() -> None:
    specs, handler, ready = Specs(AgentSpec, "agents"), Handler(), threading.Event()
    specs.on_change, specs.ready = handler, ready.is_set
    specs.listed("", [agent("a")])
    specs.changed("", "MODIFIED", agent("a", version="2"))
    specs.changed("", "DELETED", agent("a", version="2"))
    assert handler.seen == [], "nothing before what it reads is whole"
    ready.set()
    assert handler.wait(3) == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    specs.stop()


def test_a_fresh_list_tells_what_changed_and_the_last_body_of_what_went() -> None:
    specs, handler = Specs(AgentSpec, "agents"), Handler()
    specs.listed("", [agent("a"), agent("b")])
    specs.on_change = handler
    specs.listed("", [agent("a", version="2")])  # b was deleted meanwhile
    assert handler.wait(2) == [("DELETED", "b"), ("ADDED", "a")]
    assert handler.bodies[0]["metadata"]["uid"] == "u-b", "the mirror records it by uid"
    specs.stop()


def test_a_handler_that_fails_does_not_stop_the_next_and_is_retried_while_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watching, "RETRY_SECONDS", 0.01)
    specs, handler = Specs(AgentSpec, "agents"), Handler(fail_on="a")
    specs.on_change = handler
    first = agent("a")
    specs.changed("", "ADDED", first)
    specs.changed("", "ADDED", agent("b"))
    assert handler.wait(3)[:3] == [("ADDED", "a"), ("ADDED", "b"), ("ADDED", "a")]
    handler.fail_on = None
    newer = agent("a", version="2")
    specs.changed("", "MODIFIED", newer)
    deadline = time.monotonic() + 2
    while ("MODIFIED", "a") not in handler.seen and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # any retry of the older change still waiting has come due
    assert handler.bodies[-1] is newer, "the older change is not handled after the newer one"
    specs.stop()


class Listing:
    """A watch that has listed, and what a list of it says now."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = list(objects)
        self.listed_once = threading.Event()
        self.listed_once.set()

    def list_now(self) -> list[dict[str, Any]]:
        return self.objects

    def stop(self) -> None:
        pass


def test_a_failed_change_told_on_taking_over_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watching, "RETRY_SECONDS", 0.01)
    specs, handler = Specs(AgentSpec, "agents"), Handler(fail_on="a")
    specs.on_change = handler
    specs.set_handling(False)  # standing by: it holds, and tells nobody
    specs.changed("", "ADDED", agent("a"))
    assert handler.seen == []
    specs.watches = [Listing(agent("a"))]  # type: ignore[list-item]
    specs.set_handling(True)  # the list's body is not the one held, at the same version
    assert handler.wait(2)[:2] == [("ADDED", "a"), ("ADDED", "a")]
    specs.stop()
