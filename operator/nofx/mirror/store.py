"""The mirror's Postgres database: a pool of connections, batched idempotent writes of audit
events, usage and Runs, and the entry points of the other mirror modules (migrations in
schema.py, chained appends in streams.py, Agent and Template history in history.py, the CLI's
reads in queries.py, signed checkpoints in checkpoints.py, the chain check in verify.py).

With audit keys (keys.py), rows are hashed with the current key and the heads of finished Runs
and changed Agent and Template streams are signed; without, rows keep plain sha256 hashes.

Writes are keyed by natural keys and the Store's region, so writing the same batch twice (an
operator that crashed before it learned of its commit) changes nothing. Reads of history are
limited to the Store's region unless asked for all regions (a global database holds several).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.mirror import bulk, checkpoints, history, queries, schema, streams
from nofx.mirror.audit_checks import Verification
from nofx.mirror.errors import refusals_as_rejected
from nofx.mirror.escaping import escape_fields, escape_json
from nofx.mirror.keys import AuditKey, KeyRing
from nofx.mirror.records import AuditEvent, RunRecord, SpecVersion, UsageRecord
from nofx.mirror.verify import verify as verify_chains

INSERT_USAGE = bulk.Insert(
    "usage_records",
    [
        "region", "run_uid", "namespace", "run_name", "step", "item_index", "attempt",
        "job_name", "account", "agent", "started_at", "finished_at", "billed_at",
        "wall_seconds", "cpu_request", "memory_request", "cost", "currency", "outcome",
        "token_cost", "queue", "queued_seconds",
    ],
)  # fmt: skip

INSERT_TOKENS = bulk.Insert(
    "token_usage",
    [
        "region", "run_uid", "namespace", "run_name", "step", "item_index", "attempt",
        "account", "agent", "model", "billed_at", "input_tokens", "output_tokens",
        "cached_tokens", "cost", "currency",
    ],
)  # fmt: skip

INSERT_CACHE = bulk.Insert(
    "step_cache",
    [
        "region", "cache_key", "namespace", "account", "run_uid", "run_name", "step",
        "attempt", "outputs", "created_at",
    ],
)  # fmt: skip

# A finished Run (finished_at set or a terminal phase) is never updated again, so a late,
# older record cannot move it back; null fields never erase what is known. One row per Run in
# a statement (see _one_per_run).
UPSERT_RUNS = bulk.Insert(
    "runs",
    ["region", *(field.name for field in dataclasses.fields(RunRecord))],  # streams.row's keys
    alias="r",
    then="""ON CONFLICT (region, uid) DO UPDATE SET
    namespace = EXCLUDED.namespace,
    name = EXCLUDED.name,
    template = coalesce(EXCLUDED.template, r.template),
    account = EXCLUDED.account,
    phase = coalesce(EXCLUDED.phase, r.phase),
    created_at = coalesce(EXCLUDED.created_at, r.created_at),
    started_at = coalesce(EXCLUDED.started_at, r.started_at),
    finished_at = coalesce(EXCLUDED.finished_at, r.finished_at)
WHERE r.finished_at IS NULL AND (r.phase IS NULL OR r.phase <> ALL(%(terminal)s))""",
)  # fmt: skip


class Store:
    """The mirror's Postgres database, written and read by one region's operator (or, for
    verify and cross-region reads, by anyone with a connection to a global database)."""

    def __init__(
        self,
        dsn: str,
        region: str,
        *,
        keys: KeyRing | None = None,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 30.0,
    ) -> None:
        if not region:
            raise ValueError("a Store needs a region: it tags every row it writes")
        self.dsn = dsn
        self.region = region
        self.keys = keys
        # check_connection: after a Postgres restart, a stale pooled connection is replaced
        # before use instead of failing the next write.
        self._pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            name=f"nofx-mirror-{region}",
            open=False,
        )
        self._open_lock = threading.Lock()
        self._opened = False

    def open(self) -> None:
        """Start the pool (connections are made in the background). Called on first use."""
        with self._open_lock:
            if not self._opened:
                self._pool.open()
                self._opened = True

    def close(self) -> None:
        with self._open_lock:
            if self._opened:
                self._pool.close()

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        self.open()
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Cursor[Any]]:
        """A cursor in a transaction of its own; Postgres's refusals raise Rejected."""
        with (
            refusals_as_rejected(),
            self._connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            yield cur

    # --- schema ---

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, each in its own transaction; returns their names.
        Concurrent callers wait for each other on an advisory lock, so each applies once."""
        return schema.migrate(self.dsn)

    # --- writes ---

    def write(
        self,
        events: Sequence[AuditEvent],
        usage: Sequence[UsageRecord],
        runs: Sequence[RunRecord],
    ) -> list[datetime]:
        """Store a batch in one transaction. Events and usage already stored are skipped, Runs
        are upserted. Returns when each newly stored event happened. Raises ChainGapError
        (writing nothing) if an event's seq - 1 is missing, Rejected (writing nothing) if
        Postgres refuses a value."""
        # Escaped before hashing: the chain covers the stored values (see escaping.py).
        events = [escape_fields(event) for event in events]
        usage = [escape_fields(record) for record in usage]
        runs = [escape_fields(run) for run in runs]
        with self._transaction() as cur:
            rows = streams.chain_rows(cur, self.region, events, self.keys)
            if rows:
                streams.INSERT_EVENTS.execute(cur, rows)
                if self.keys:
                    checkpoints.checkpoint_finished_runs(
                        cur, self.region, rows, runs, self.keys.current, datetime.now(UTC)
                    )
            if usage:
                usage_rows = [self._usage_row(record) for record in usage]
                INSERT_USAGE.execute(cur, usage_rows)
                tokens = [
                    {**row, **streams.row(self.region, escape_fields(used))}
                    for row, record in zip(usage_rows, usage, strict=True)
                    for used in record.tokens
                ]
                if tokens:
                    INSERT_TOKENS.execute(cur, tokens)
                cached = [
                    self._cache_row(r) for r in usage if r.cache_key and r.outcome == "Succeeded"
                ]
                if cached:
                    INSERT_CACHE.execute(cur, cached)
            if runs:
                for wave in _one_per_run(runs):
                    rows_of_runs = [streams.row(self.region, run) for run in wave]
                    UPSERT_RUNS.execute(cur, rows_of_runs, terminal=sorted(TERMINAL_RUN_PHASES))
        return [row["at"] for row in rows]

    def record_version(self, version: SpecVersion) -> int | None:
        """Store the spec as version N+1 with its audit event, unless the latest version of
        the same object (same uid) has the same spec_hash; returns N+1, or None (history.py)."""
        with self._transaction() as cur:
            return history.record_version(cur, self.region, version, self._signing_key())

    def record_deletion(
        self, kind: str, namespace: str, name: str, uid: str, at: datetime, actor: str | None
    ) -> None:
        """Append a Deleted event to the Agent's or Template's stream, once per uid."""
        with self._transaction() as cur:
            history.record_deletion(
                cur, self.region, kind, namespace, name, uid, at, actor, self._signing_key()
            )

    def checkpoint_registry(self) -> int:
        """Sign the head of every Agent and Template stream of this region that changed since
        its last checkpoint; returns how many were signed (none without keys)."""
        if not self.keys:
            return 0
        with self._transaction() as cur:
            return checkpoints.checkpoint_registry(
                cur, self.region, self.keys.current, datetime.now(UTC)
            )

    def _signing_key(self) -> AuditKey | None:
        return self.keys.current if self.keys else None

    def _usage_row(self, record: UsageRecord) -> dict[str, Any]:
        billed_at = record.finished_at or record.started_at or datetime.now(UTC)
        return {
            **streams.row(self.region, record),
            "billed_at": billed_at,
            "token_cost": record.token_cost,
        }

    def _cache_row(self, record: UsageRecord) -> dict[str, Any]:
        """A cached step's successful attempt as its cache entry (outputs escaped like all
        jsonb the mirror stores)."""
        return {
            **streams.row(self.region, record),
            "outputs": escape_json(record.outputs or {}),
            "created_at": record.finished_at or record.started_at or datetime.now(UTC),
        }

    # --- reads (queries.py, verify.py) ---

    def cache_lookup(
        self, key: str, namespace: str, account: str, since: datetime
    ) -> queries.CacheEntry | None:
        """The newest cache entry of this region under key, created after since."""
        with self._connection() as conn:
            return queries.cache_lookup(conn, self.region, key, namespace, account, since)

    def versions(self, kind: str, namespace: str, name: str) -> list[queries.StoredVersion]:
        """Every stored spec of the object, oldest first."""
        with self._connection() as conn:
            return queries.versions(conn, self.region, kind, namespace, name)

    def timeline(
        self, namespace: str, run_name: str, *, all_regions: bool = False
    ) -> list[dict[str, Any]]:
        """Audit events of every Run of that name (oldest uid first), each in seq order."""
        with self._connection() as conn:
            return queries.timeline(conn, self._region_filter(all_regions), namespace, run_name)

    def usage(
        self, account: str | None, since: datetime, *, all_regions: bool = False
    ) -> list[dict[str, Any]]:
        """Totals per UTC day, account, agent and currency of the step attempts billed since
        `since`, of one account or (None) of all (queries.usage)."""
        with self._connection() as conn:
            return queries.usage(conn, self._region_filter(all_regions), account, since)

    def usage_by_model(
        self, account: str | None, since: datetime, *, all_regions: bool = False
    ) -> list[dict[str, Any]]:
        """Tokens and cost per UTC day, account, agent, model and currency, with the wall
        time as model None (queries.usage_by_model)."""
        with self._connection() as conn:
            return queries.usage_by_model(conn, self._region_filter(all_regions), account, since)

    def spent_since(self, since: datetime) -> dict[tuple[str, str], Decimal]:
        """(account, currency) → the cost billed in this region since `since`."""
        with self._connection() as conn:
            return queries.spent_since(conn, self.region, since)

    def run_usage(self, run_uid: str) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return queries.run_usage(conn, self.region, run_uid)

    def finished_runs(self, since: datetime, until: datetime) -> list[tuple[str, str, str]]:
        """(namespace, name, uid) of the Runs that finished in [since, until)."""
        with self._connection() as conn:
            return queries.finished_runs(conn, self.region, since, until)

    def verify(self, stream: str | None = None) -> Verification:
        """Check every (region, stream) in the database, or one stream in every region: its
        chain, the MACs of its rows and checkpoints (with the Store's keys), the heads its
        checkpoints signed, and that a finished Run has one (verify.py)."""
        with self._connection() as conn:
            return verify_chains(conn, stream, self.keys)

    def _region_filter(self, all_regions: bool) -> str | None:
        return None if all_regions else self.region


def _one_per_run(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """The records in statements that each hold a Run at most once, in order: one statement
    cannot upsert a row twice. The writer sends one record per Run, so there is one."""
    waves: list[list[RunRecord]] = []
    seen: dict[str, int] = {}
    for run in runs:
        wave = seen[run.uid] = seen.get(run.uid, -1) + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(run)
    return waves
