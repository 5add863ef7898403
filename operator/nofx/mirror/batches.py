"""Writing queued Runs' pending entries to Postgres: the whole batch in one transaction, or, if
Postgres refuses it, Run by Run, so that one refused Run never holds back the others."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from nofx import metrics
from nofx.mirror.errors import Rejected
from nofx.mirror.run_body import RunKey, RunRows, run_rows
from nofx.mirror.store import Store

log = logging.getLogger("nofx.mirror")


def write_isolated(
    store: Store, bodies: dict[RunKey, dict[str, Any]]
) -> tuple[dict[RunKey, dict[str, Any]], dict[RunKey, str]]:
    """Writes the Runs' pending entries in one transaction; if Postgres refuses it, Run by
    Run. Returns the Runs written, and the problem of each Run refused."""
    rows: dict[RunKey, RunRows] = {}
    refused: dict[RunKey, str] = {}
    for key, body in bodies.items():
        try:
            rows[key] = run_rows(body)
        except (KeyError, TypeError, ValueError, ArithmeticError) as error:
            refused[key] = f"malformed audit outbox entry: {error!r}"
    if len(rows) > 1:
        try:
            write_rows(store, list(rows.values()))
            return {key: bodies[key] for key in rows}, refused
        except Rejected as error:
            log.info("Postgres refused a batch, writing it Run by Run: %s", error)
    for key in list(rows):
        try:
            write_rows(store, [rows[key]])
        except Rejected as error:
            refused[key] = str(error)
            del rows[key]
    return {key: bodies[key] for key in rows}, refused


def write_rows(store: Store, rows: list[RunRows]) -> None:
    events = [event for run_events, _, _ in rows for event in run_events]
    # Counted as stored: an event written again (from an older body) is not new, nor late.
    stored = store.write(events, [u for _, usage, _ in rows for u in usage], [r for *_, r in rows])
    metrics.MIRROR_EVENTS.inc(len(stored))
    now = datetime.now(UTC)
    for at in stored:
        metrics.MIRROR_LAG_SECONDS.observe(max(0.0, (now - at).total_seconds()))
