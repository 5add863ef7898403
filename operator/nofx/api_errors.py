"""What the API server's answers to a write mean to the writer: the object changed since it was
read (Conflict: read again, decide again), or the write is refused and sending it again would
only be refused again (Rejected, with the server's own message)."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException


class Conflict(Exception):
    """The object changed since it was read; read it again and decide again."""


class Rejected(Exception):
    """The API server refused a write as invalid, forbidden or too large: sending it again
    would only be refused again. The message is the server's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def too_large(self) -> bool:
        return self.status == 413 or "too large" in self.message or "Too many" in self.message


# 400 Bad Request, 403 Forbidden (RBAC, admission policies, quota), 413, 422 Invalid.
_REFUSALS = frozenset({400, 403, 413, 422})


def rejected(error: ApiException) -> Rejected | None:
    """The Rejected an API error stands for, if it is one. etcd's own size limit comes back as
    a 500 whose message says so."""
    message = _server_message(error)
    if error.status in _REFUSALS or (error.status == 500 and "request is too large" in message):
        return Rejected(error.status or 0, message)
    return None


def _server_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason or error)
