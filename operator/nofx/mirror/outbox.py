"""The Run's audit outbox, kept in its own status: pure functions over plain data.

Each reconcile appends the transitions and finished attempts it decided to `status.audit.pending`
in the same status update that makes them true, numbering events per Run. The mirror writes
them to Postgres (idempotently, keyed by Run uid and sequence number) and only then removes them.
So nothing is lost when the operator dies or Postgres is down, and nothing is written twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from nofx.api.identity import changed_by, created_by
from nofx.api.run import STARTED_STEP_PHASES, AuditOutbox, RunStatus
from nofx.api.schedule import schedule_of
from nofx.changes import AttemptFinished, TokensUsed, Transition
from nofx.mirror.chain import stream_name
from nofx.mirror.records import AuditEvent, TokenRecord, UsageRecord

EVENT = "event"
USAGE = "usage"
OPERATOR_ACTOR = "nofx-operator"


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def record(
    status: RunStatus,
    changes: Iterable[Transition],
    attempts: Iterable[AttemptFinished],
    now: datetime,
    metadata: Mapping[str, Any],
    approvers: Mapping[str, str] | None = None,
) -> None:
    """Appends what happened to the status' outbox (for the actors: the Run's metadata, and
    who approved each approved step)."""
    pending = list(status.audit.pending or []) if status.audit else []
    seq = status.audit.next_seq if status.audit else 1
    for change in changes:
        pending.append(
            {
                "type": EVENT,
                "seq": seq,
                "at": _time(now),
                "reason": change.reason,
                "message": change.message,
                "step": change.step,
                "index": change.index,
                "attempt": change.attempt,
                "from": change.from_phase,
                "to": change.to_phase,
                "actor": actor_of(change, metadata, approvers or {}),
            }
        )
        seq += 1
    for attempt in attempts:
        pending.append(
            {
                "type": USAGE,
                "step": attempt.step,
                "index": attempt.index,
                "attempt": attempt.attempt,
                "job": attempt.job_name,
                "agent": attempt.agent,
                "startedAt": _time(attempt.started_at),
                "finishedAt": _time(attempt.finished_at),
                "wallSeconds": attempt.wall_seconds,
                "cpu": attempt.cpu_request,
                "memory": attempt.memory_request,
                "cost": str(attempt.cost),
                "currency": attempt.currency,
                "outcome": attempt.outcome,
                **(
                    {"tokens": [_tokens_entry(used) for used in attempt.tokens]}
                    if attempt.tokens
                    else {}
                ),
                **(
                    {"cache": {"key": attempt.cache_key, "outputs": attempt.outputs or {}}}
                    if attempt.cache_key
                    else {}
                ),
                **(
                    {"queue": attempt.queue, "queuedSeconds": attempt.queued_seconds}
                    if attempt.queue
                    else {}
                ),
            }
        )
    if pending or status.audit is not None:
        status.audit = AuditOutbox.model_validate({"nextSeq": seq, "pending": pending or None})


def _tokens_entry(used: TokensUsed) -> dict[str, Any]:
    return {
        "model": used.model,
        "input": used.input_tokens,
        "output": used.output_tokens,
        "cached": used.cached_tokens,
        "cost": str(used.cost),
    }


def _token_record(entry: Mapping[str, Any]) -> TokenRecord:
    return TokenRecord(
        model=entry["model"],
        input_tokens=int(entry["input"]),
        output_tokens=int(entry["output"]),
        cached_tokens=int(entry["cached"]),
        cost=Decimal(entry["cost"]),
    )


def actor_of(
    change: Transition, metadata: Mapping[str, Any], approvers: Mapping[str, str]
) -> str | None:
    """Who made a transition happen. A Run's start is the doing of its creator (and of the
    Schedule that owns it: `schedule/NAME via CREATOR`), its cancellation the doing of whoever last
    changed its spec (both as the API server authenticated them; None: unknown), the first
    start of an approved step the doing of its approver (the nofx-approvals policy makes
    approvedBy the authenticated user). Everything else the operator decided."""
    if change.step is None and change.from_phase is None:
        schedule, creator = schedule_of(metadata), created_by(metadata)
        if schedule is None:
            return creator
        # Who created it stays visible: an owner reference is only what the creator wrote.
        return f"schedule/{schedule} via {creator}" if creator else f"schedule/{schedule}"
    if change.step is None and change.to_phase == "Cancelled":
        return changed_by(metadata)
    # A queued step starts when it becomes Queued (its Job exists); Queued ↔ Running later is
    # Kueue admitting and evicting it, not the start.
    first_start = (
        change.index is None
        and change.to_phase in STARTED_STEP_PHASES
        and change.from_phase not in STARTED_STEP_PHASES
        and change.attempt in (None, 1)
    )
    if change.step is not None and change.step in approvers and first_start:
        return approvers[change.step]
    return OPERATOR_ACTOR


def entry_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies an outbox entry: the event's sequence number, the usage's attempt."""
    if entry["type"] == EVENT:
        return (EVENT, entry["seq"])
    index = -1 if entry.get("index") is None else entry["index"]
    return (USAGE, entry["step"], index, entry["attempt"])


def acknowledge(
    pending: list[dict[str, Any]], stored: set[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """The entries still to store once those with keys in `stored` are in Postgres."""
    return [entry for entry in pending if entry_key(entry) not in stored]


def account_of(body: Mapping[str, Any]) -> str:
    """The account a Run is billed to: pinned in its status; a Run older than pinning kept
    what its spec said."""
    pinned = (body.get("status") or {}).get("account")
    return pinned or (body.get("spec") or {}).get("account") or "default"


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)


def to_records(
    body: dict[str, Any], pending: list[dict[str, Any]]
) -> tuple[list[AuditEvent], list[UsageRecord]]:
    """The outbox entries of one Run as rows for the store."""
    metadata, account = body["metadata"], account_of(body)
    uid, namespace, name = metadata["uid"], metadata["namespace"], metadata["name"]
    events, usage = [], []
    for entry in pending:
        if entry["type"] == EVENT:
            events.append(
                AuditEvent(
                    stream=stream_name("Run", namespace, name, uid),
                    seq=entry["seq"],
                    at=datetime.fromisoformat(entry["at"]),
                    kind="Run",
                    namespace=namespace,
                    name=name,
                    uid=uid,
                    reason=entry["reason"],
                    message=entry["message"],
                    step=entry.get("step"),
                    item_index=entry.get("index"),
                    attempt=entry.get("attempt"),
                    from_phase=entry.get("from"),
                    to_phase=entry.get("to"),
                    actor=entry.get("actor"),
                )
            )
        else:
            usage.append(
                UsageRecord(
                    run_uid=uid,
                    namespace=namespace,
                    run_name=name,
                    step=entry["step"],
                    item_index=entry.get("index"),
                    attempt=entry["attempt"],
                    job_name=entry["job"],
                    account=account,
                    agent=entry["agent"],
                    started_at=_parse_time(entry.get("startedAt")),
                    finished_at=_parse_time(entry.get("finishedAt")),
                    wall_seconds=float(entry["wallSeconds"]),
                    cpu_request=entry.get("cpu"),
                    memory_request=entry.get("memory"),
                    cost=Decimal(entry["cost"]),
                    currency=entry["currency"],
                    outcome=entry.get("outcome"),
                    tokens=tuple(_token_record(used) for used in entry.get("tokens") or ()),
                    cache_key=(entry.get("cache") or {}).get("key"),
                    outputs=(entry.get("cache") or {}).get("outputs"),
                    queue=entry.get("queue"),
                    queued_seconds=_seconds(entry.get("queuedSeconds")),
                )
            )
    return events, usage
