"""Fixtures of the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.fake_kube import FakeKube


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Events the reconciler posts through any FakeKube, as (type, reason, message)."""
    posted: list[tuple[str, str, str]] = []

    def create_event(
        self: FakeKube, involved: dict[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        posted.append((event_type, reason, message))

    monkeypatch.setattr(FakeKube, "create_event", create_event)
    return posted
