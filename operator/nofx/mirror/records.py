"""What the operator hands to the mirror: plain, immutable data, no Postgres and no Kubernetes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class AuditEvent:
    """One transition of a Run or one change of an Agent/Template; chained per stream."""

    stream: str  # "run/<uid>", "agent/<namespace>/<name>", "template/<namespace>/<name>"
    seq: int  # 1, 2, 3 ... per stream, no gaps
    at: datetime  # tz-aware
    kind: str  # "Run" | "Agent" | "Template"
    namespace: str
    name: str
    uid: str
    reason: str  # e.g. StepStarted, RunSucceeded, Created, Updated, Deleted
    message: str
    step: str | None = None
    item_index: int | None = None
    attempt: int | None = None
    from_phase: str | None = None
    to_phase: str | None = None
    actor: str | None = None
    spec_hash: str | None = None


@dataclass(frozen=True)
class TokenRecord:
    """Tokens of one model that one step attempt reported, and their cost in its currency."""

    model: str
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: Decimal


@dataclass(frozen=True)
class UsageRecord:
    """One finished step attempt, for billing: cost is its wall time's, the tokens' come on
    top in the same currency."""

    run_uid: str
    namespace: str
    run_name: str
    step: str
    item_index: int | None
    attempt: int
    job_name: str
    account: str
    agent: str
    started_at: datetime | None
    finished_at: datetime | None
    wall_seconds: float
    cpu_request: str | None  # Kubernetes quantity as written, e.g. "500m"
    memory_request: str | None  # e.g. "512Mi"
    cost: Decimal
    currency: str
    outcome: str | None = None  # Succeeded or Failed
    tokens: tuple[TokenRecord, ...] = ()
    # A cached step's successful attempt: stored as a cache entry under this key, with outputs.
    cache_key: str | None = None
    outputs: dict[str, Any] | None = None
    # Kueue: the LocalQueue of its Job and the seconds it waited for admission (not billed).
    queue: str | None = None
    queued_seconds: float | None = None

    @property
    def token_cost(self) -> Decimal:
        return sum((record.cost for record in self.tokens), Decimal(0))


@dataclass(frozen=True)
class RunRecord:
    """The latest known state of a Run (upserted)."""

    uid: str
    namespace: str
    name: str
    template: str | None
    account: str
    phase: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class SpecVersion:
    """A spec of an Agent or Template as it was applied (references only, never secrets)."""

    kind: str  # "Agent" | "Template"
    namespace: str
    name: str
    uid: str
    spec: dict[str, Any]
    spec_hash: str
    at: datetime
    actor: str | None = None


@dataclass(frozen=True)
class Deletion:
    """An Agent or Template deleted: the end of its uid's history."""

    kind: str
    namespace: str
    name: str
    uid: str
    at: datetime
    actor: str | None
