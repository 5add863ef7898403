"""Fixtures of the unit tests."""

from __future__ import annotations

import kopf
import pytest


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Events the reconciler posts, as (type, reason, message). kopf.event needs a running
    operator (its settings and posting queue); here it only records."""
    posted: list[tuple[str, str, str]] = []

    def event(_: object, *, type: str, reason: str, message: str = "") -> None:
        posted.append((type, reason, message))

    monkeypatch.setattr(kopf, "event", event)
    return posted
