"""The reconciler skips the watch events of its own writes, and only those."""

from nofx.kube import OwnWrites


def stored(name: str, resource_version: str) -> dict[str, object]:
    return {"metadata": {"namespace": "team", "name": name, "resourceVersion": resource_version}}


def test_each_own_write_is_an_echo_once() -> None:
    own = OwnWrites()
    own.add("runs", stored("r1", "10"))
    own.add("runs", stored("r1", "11"))  # a finalizer, then the status, in one reconcile
    assert own.is_echo("runs", "team", "r1", "10")
    assert own.is_echo("runs", "team", "r1", "11")
    assert not own.is_echo("runs", "team", "r1", "11")


def test_writes_of_others_are_not_echoes() -> None:
    own = OwnWrites()
    own.add("runs", stored("r1", "10"))
    assert not own.is_echo("runs", "team", "r1", "12")
    assert not own.is_echo("runs", "team", "r2", "10")
    assert not own.is_echo("templates", "team", "r1", "10")


def test_forget_drops_what_a_deleted_object_left() -> None:
    own = OwnWrites()
    own.add("runs", stored("r1", "10"))
    own.forget("runs", "team", "r1")
    assert not own.is_echo("runs", "team", "r1", "10")


def test_an_echo_drops_the_writes_before_it() -> None:
    """Kopf handles only the last of several quick events: the skipped ones never come."""
    own = OwnWrites()
    for version in ("10", "11", "12"):
        own.add("runs", stored("r1", version))
    assert own.is_echo("runs", "team", "r1", "11")
    assert not own.is_echo("runs", "team", "r1", "10")
    assert own.is_echo("runs", "team", "r1", "12")


def test_only_the_latest_writes_are_kept() -> None:
    own = OwnWrites()
    for version in range(100):
        own.add("runs", stored("r1", str(version)))
    assert not own.is_echo("runs", "team", "r1", "0")
    assert own.is_echo("runs", "team", "r1", "99")
