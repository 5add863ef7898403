"""The audit keys: HMAC keys read from a directory (a mounted Secret), one file per key.

A file's name is its key id, its bytes are the key. The key that signs new rows and checkpoints
is the one a file named `current` names, else the greatest key id, so rotating means adding a
file (and pointing `current` at it); the old files stay so that old rows still verify. Only key
ids are ever printed, logged or stored: neither class shows its bytes in its repr.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CURRENT = "current"  # the file naming the signing key, not a key itself
MIN_KEY_BYTES = 32  # HMAC-SHA256's block of security; shorter keys are refused
KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class AuditKeyError(ValueError):
    """The key directory cannot be used; the message names key ids, never key bytes."""


@dataclass(frozen=True)
class AuditKey:
    id: str
    secret: bytes = field(repr=False)


class KeyRing:
    """Every key of the directory, by id, and the one that signs."""

    def __init__(self, keys: dict[str, bytes], current: str) -> None:
        if current not in keys:
            raise AuditKeyError(f"the current audit key {current!r} is not among {sorted(keys)}")
        for key_id, secret in keys.items():
            if not KEY_ID.fullmatch(key_id) or key_id == CURRENT:
                raise AuditKeyError(f"{key_id!r} is not a valid audit key id ([A-Za-z0-9._-], 63)")
            if len(secret) < MIN_KEY_BYTES:
                raise AuditKeyError(
                    f"audit key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes"
                    f" (make one with: openssl rand -out {key_id} 32)"
                )
        self._keys = {key_id: AuditKey(key_id, secret) for key_id, secret in keys.items()}
        self.current = self._keys[current]

    @classmethod
    def from_dir(cls, directory: str | Path) -> KeyRing:
        folder = Path(directory)
        if not folder.is_dir():
            raise AuditKeyError(f"audit key directory {folder} does not exist")
        keys: dict[str, bytes] = {}
        current = None
        for path in sorted(folder.iterdir()):
            # A mounted Secret also holds ..data and ..<timestamp> entries: not keys.
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.name == CURRENT:
                current = path.read_text().strip()
            else:
                keys[path.name] = path.read_bytes()
        if not keys:
            raise AuditKeyError(f"no audit keys in {folder}: one file per key, named by its key id")
        return cls(keys, current or max(keys))

    def get(self, key_id: str) -> AuditKey | None:
        return self._keys.get(key_id)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.ids}, current={self.current.id!r})"
