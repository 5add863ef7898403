"""Whether this replica is the active one, read from the peering object by Kopf's rule: the
operator's own watches and timers stand by exactly when Kopf does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from nofx.apiserver import ApiServer
from nofx.peering import Peering, blocking_peers

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def seen(priority: int, ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    lastseen = (NOW - timedelta(seconds=ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": lastseen}


def test_live_peers_of_higher_or_equal_priority_block_and_dead_or_lower_ones_do_not() -> None:
    status = {
        "me": seen(10),
        "higher": seen(20),
        "same": seen(10),
        "lower": seen(5),
        "dead": seen(99, ago=61),
        "gone": None,  # Kopf's way of removing a peer in a merge patch
    }
    assert blocking_peers(status, "me", 10, NOW) == ["higher", "same"]
    assert blocking_peers({"me": seen(10), "lower": seen(5)}, "me", 10, NOW) == []


def peering(*namespaces: str) -> tuple[Peering, list[bool]]:
    told: list[bool] = []
    return Peering(cast(ApiServer, None), "me", 10, namespaces, told.append), told


def obj(**status: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "metadata": {"name": "nofx"},
        "status": {
            peer: {"priority": priority, "lifetime": 60, "lastseen": now.isoformat()}
            for peer, priority in status.items()
        },
    }


def test_it_stands_by_until_it_has_seen_the_object_and_while_a_higher_peer_lives() -> None:
    replica, told = peering()
    assert not replica.active
    replica.saw("", None)
    assert (replica.active, told) == (False, [False]), "no peering object: Kopf stays paused too"
    replica.saw("", obj(me=10, other=20))
    assert (replica.active, told) == (False, [False])
    replica.saw("", obj(me=10, other=5))
    assert (replica.active, told) == (True, [False, True])
    replica.saw("", obj(me=10, other=5))
    assert told == [False, True], "only changes are told"
    replica.saw("", obj(me=10, newcomer=30))
    assert (replica.active, told) == (False, [False, True, False])


def test_with_several_namespaces_it_is_active_only_where_all_say_so() -> None:
    replica, told = peering("a", "b")
    replica.saw("a", obj(me=10))
    assert not replica.active, "namespace b not seen yet"
    replica.saw("b", obj(me=10))
    assert (replica.active, told) == (True, [False, True])
