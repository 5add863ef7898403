"""The namespaces' labels held from a watch: each scope's list replaces what it held, changes
and deletions follow, and a namespace not seen yet is asked for."""

from __future__ import annotations

from typing import Any

from nofx.reconcilers.namespaces import NamespaceLabels


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}}


class Asked:
    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str) -> dict[str, str]:
        self.names.append(name)
        return {"from": "the API server"}


def test_it_answers_from_memory_and_asks_only_for_what_it_has_not_seen() -> None:
    held, asked = NamespaceLabels(), Asked()
    held.listed("", [namespace("a", account="acme"), namespace("b")])
    assert held.labels_of("a", asked) == {"account": "acme"}
    assert held.labels_of("b", asked) == {}, "no labels is an answer too"
    assert asked.names == []
    assert held.labels_of("new", asked) == {"from": "the API server"}
    assert asked.names == ["new"]


def test_changes_follow_and_a_scopes_list_replaces_only_that_scope() -> None:
    held, asked = NamespaceLabels(), Asked()
    held.listed("a", [namespace("a", account="acme")])
    held.listed("b", [namespace("b", account="beta")])
    held.changed("a", "MODIFIED", namespace("a", account="other"))
    assert held.labels_of("a", asked) == {"account": "other"}
    held.listed("b", [])  # b went away during a gap
    assert held.labels_of("a", asked) == {"account": "other"}
    held.labels_of("b", asked)
    held.changed("a", "DELETED", namespace("a"))
    held.labels_of("a", asked)
    assert asked.names == ["b", "a"]
