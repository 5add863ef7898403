"""Our own writes, recognised when their watch events come back, so they are not reconciled
again."""

from __future__ import annotations

import threading
from typing import Any


class OwnWrites:
    """resourceVersions this process wrote whose watch events have not come back yet. Such an
    event only echoes a write whose effects the writer knew: reconciling it again would only
    cost (an API read, often a conflict)."""

    KEEP = 8  # per object: Kopf may batch several quick events into the last one

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str, str], list[str]] = {}

    def add(self, plural: str, stored: dict[str, Any]) -> None:
        """Records a write, given the object as stored."""
        metadata = stored["metadata"]
        with self._lock:
            versions = self._versions.setdefault(
                (plural, metadata["namespace"], metadata["name"]), []
            )
            versions.append(metadata["resourceVersion"])
            del versions[: -self.KEEP]

    def is_echo(self, plural: str, namespace: str, name: str, resource_version: str) -> bool:
        """True once for each version we wrote. Events come in order, so the writes before it
        will never be seen again (Kopf skipped them, or they came already)."""
        with self._lock:
            versions = self._versions.get((plural, namespace, name)) or []
            if resource_version not in versions:
                return False
            del versions[: versions.index(resource_version) + 1]
            return True

    def forget(self, plural: str, namespace: str, name: str) -> None:
        with self._lock:
            self._versions.pop((plural, namespace, name), None)
