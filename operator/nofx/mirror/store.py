"""Postgres I/O of the mirror: migrations, batched idempotent writes with hash chaining, the
chain check, and the reads behind the CLI.

Writes are keyed by natural keys and the Store's region, so writing the same batch twice (an
operator that crashed before it learned of its commit) changes nothing. Reads of history are
limited to the Store's region unless asked for all regions (a global database holds several).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from itertools import groupby
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from nofx.api.run import TERMINAL_RUN_PHASES
from nofx.mirror import chain
from nofx.mirror.escaping import escape, escape_fields, escape_json, unescape_json, unescape_row
from nofx.mirror.records import AuditEvent, RunRecord, SpecVersion, UsageRecord

log = logging.getLogger(__name__)

# Key of the session advisory lock that serialises concurrent `migrate` calls.
MIGRATION_LOCK = 0x6E6F_6678_6D69_67  # "nofxmig"

EVENT_FIELDS = [f.name for f in dataclasses.fields(AuditEvent)]
AUDIT_COLUMNS = ["region", *EVENT_FIELDS, "prev_hash", "hash"]

INSERT_EVENT = sql.SQL("INSERT INTO audit_events ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
    sql.SQL(", ").join(map(sql.Identifier, AUDIT_COLUMNS)),
    sql.SQL(", ").join(map(sql.Placeholder, AUDIT_COLUMNS)),
)

INSERT_USAGE = """
INSERT INTO usage_records (
    region, run_uid, namespace, run_name, step, item_index, attempt, job_name, account, agent,
    started_at, finished_at, billed_at, wall_seconds, cpu_request, memory_request, cost, currency,
    outcome
) VALUES (
    %(region)s, %(run_uid)s, %(namespace)s, %(run_name)s, %(step)s, %(item_index)s, %(attempt)s,
    %(job_name)s, %(account)s, %(agent)s, %(started_at)s, %(finished_at)s, %(billed_at)s,
    %(wall_seconds)s, %(cpu_request)s, %(memory_request)s, %(cost)s, %(currency)s, %(outcome)s
) ON CONFLICT DO NOTHING
"""

# A finished Run (finished_at set or a terminal phase) is never updated again, so a late,
# older record cannot move it back; null fields never erase what is known.
UPSERT_RUN = """
INSERT INTO runs AS r (
    region, uid, namespace, name, template, account, phase, created_at, started_at, finished_at
) VALUES (
    %(region)s, %(uid)s, %(namespace)s, %(name)s, %(template)s, %(account)s, %(phase)s,
    %(created_at)s, %(started_at)s, %(finished_at)s
) ON CONFLICT (region, uid) DO UPDATE SET
    namespace = EXCLUDED.namespace,
    name = EXCLUDED.name,
    template = coalesce(EXCLUDED.template, r.template),
    account = EXCLUDED.account,
    phase = coalesce(EXCLUDED.phase, r.phase),
    created_at = coalesce(EXCLUDED.created_at, r.created_at),
    started_at = coalesce(EXCLUDED.started_at, r.started_at),
    finished_at = coalesce(EXCLUDED.finished_at, r.finished_at)
WHERE r.finished_at IS NULL AND (r.phase IS NULL OR r.phase <> ALL(%(terminal)s))
"""

# Bootstrapped by migrate() itself; local to each database, so neither region-keyed nor published.
SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class Rejected(Exception):
    """Postgres refused the batch for what it holds (a value out of range, a violated
    constraint), not for a lost connection: writing the same rows again fails the same way.
    Nothing of the batch was written."""


class ChainGapError(Rejected):
    """An event's predecessor is neither stored nor in the batch: writing it would break the
    chain. Nothing of the batch was written."""


@contextmanager
def _refusals_as_rejected() -> Iterator[None]:
    try:
        yield
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
        raise Rejected(str(error).strip()) from error


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration file, in the order they apply."""
    folder = resources.files("nofx.mirror") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    if not files:
        raise RuntimeError(f"no migrations in {folder}: are the *.sql files installed?")
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


class Store:
    """The mirror's Postgres database, written and read by one region's operator (or, for
    verify and cross-region reads, by anyone with a connection to a global database)."""

    def __init__(
        self,
        dsn: str,
        region: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 30.0,
    ) -> None:
        if not region:
            raise ValueError("a Store needs a region: it tags every row it writes")
        self.dsn = dsn
        self.region = region
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

    # --- schema ---

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, each in its own transaction; returns their names.
        Concurrent callers wait for each other on an advisory lock, so each applies once."""
        applied: list[str] = []
        # A connection of its own: closing it releases the session lock whatever happens.
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(SCHEMA_MIGRATIONS)
            done = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
            for name, text in migrations():
                if name in done:
                    continue
                with conn.transaction():
                    conn.execute(text)
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
                log.info("applied migration %s", name)
                applied.append(name)
        return applied

    # --- writes ---

    def write(
        self,
        events: Sequence[AuditEvent],
        usage: Sequence[UsageRecord],
        runs: Sequence[RunRecord],
    ) -> None:
        """Store a batch in one transaction. Events and usage already stored are skipped, Runs
        are upserted. Raises ChainGapError (writing nothing) if an event's seq - 1 is missing,
        Rejected (writing nothing) if Postgres refuses a value."""
        # Escaped before hashing: the chain covers the stored values (see escaping.py).
        events = [escape_fields(event) for event in events]
        usage = [escape_fields(record) for record in usage]
        runs = [escape_fields(run) for run in runs]
        with (
            _refusals_as_rejected(),
            self._connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            rows = self._chain(cur, events)
            if rows:
                cur.executemany(INSERT_EVENT, rows)
            if usage:
                cur.executemany(INSERT_USAGE, [self._usage_row(record) for record in usage])
            if runs:
                terminal = sorted(TERMINAL_RUN_PHASES)
                cur.executemany(
                    UPSERT_RUN,
                    [{**self._row(run), "terminal": terminal} for run in runs],
                )

    def record_version(self, version: SpecVersion) -> int | None:
        """Store the spec as version N+1 with its audit event, unless the latest version of
        the same object (same uid) has the same spec_hash; returns N+1, or None.

        A re-created object (new uid) gets a new version even with an unchanged spec, and its
        event says Created, so the history reads Created, ..., Deleted, Created."""
        stream = _registry_stream(version.kind, version.namespace, version.name)
        stored = escape_fields(version)
        with (
            _refusals_as_rejected(),
            self._connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            self._lock_streams(cur, [stream])
            latest = cur.execute(
                "SELECT version, spec_hash, uid FROM spec_versions"
                " WHERE region = %s AND kind = %s AND namespace = %s AND name = %s"
                " ORDER BY version DESC LIMIT 1",
                (self.region, stored.kind, stored.namespace, stored.name),
            ).fetchone()
            if latest and (latest[1], latest[2]) == (stored.spec_hash, stored.uid):
                return None
            number = latest[0] + 1 if latest else 1
            created = latest is None or latest[2] != stored.uid
            cur.execute(
                "INSERT INTO spec_versions"
                " (region, kind, namespace, name, version, uid, spec, spec_hash, at, actor)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    self.region,
                    stored.kind,
                    stored.namespace,
                    stored.name,
                    number,
                    stored.uid,
                    Jsonb(escape_json(version.spec)),
                    stored.spec_hash,
                    stored.at,
                    stored.actor,
                ),
            )
            seq, prev = self._tip(cur, stream)
            event = AuditEvent(
                stream=stream,
                seq=seq + 1,
                at=version.at,
                kind=version.kind,
                namespace=version.namespace,
                name=version.name,
                uid=version.uid,
                reason="Created" if created else "Updated",
                message=f"{version.kind} {version.namespace}/{version.name} version {number}",
                actor=version.actor,
                spec_hash=version.spec_hash,
            )
            cur.execute(INSERT_EVENT, self._event_row(escape_fields(event), prev))
            return number

    def record_deletion(
        self, kind: str, namespace: str, name: str, uid: str, at: datetime, actor: str | None
    ) -> None:
        """Append a Deleted event to the Agent's or Template's stream, once per uid."""
        stream = _registry_stream(kind, namespace, name)
        with (
            _refusals_as_rejected(),
            self._connection() as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            self._lock_streams(cur, [stream])
            already = cur.execute(
                "SELECT 1 FROM audit_events WHERE region = %s AND stream = %s AND uid = %s"
                " AND reason = 'Deleted'",
                (self.region, stream, uid),
            ).fetchone()
            if already:
                return
            seq, prev = self._tip(cur, stream)
            event = AuditEvent(
                stream=stream,
                seq=seq + 1,
                at=at,
                kind=kind,
                namespace=namespace,
                name=name,
                uid=uid,
                reason="Deleted",
                message=f"{kind} {namespace}/{name} deleted",
                actor=actor,
            )
            cur.execute(INSERT_EVENT, self._event_row(escape_fields(event), prev))

    def _lock_streams(self, cur: psycopg.Cursor[Any], streams: list[str]) -> None:
        # Writers of the same stream take turns until commit, so two transactions never both
        # chain onto the same predecessor. Sorted, so that two batches cannot deadlock.
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s || ':' || s, 0))"
            " FROM unnest(%s::text[]) WITH ORDINALITY AS t(s, n) ORDER BY n",
            (self.region, sorted(streams)),
        )

    def _chain(self, cur: psycopg.Cursor[Any], events: list[AuditEvent]) -> list[dict[str, Any]]:
        """Rows (with prev_hash and hash) of the events not yet stored, after locking their
        streams; links to stored predecessors or to earlier events of the batch."""
        if not events:
            return []
        for event in events:
            if event.seq < 1:
                raise Rejected(f"audit event seq must be >= 1: {event}")
        self._lock_streams(cur, list({event.stream for event in events}))
        # Stored hashes from each stream's first seq - 1 to its last seq in the batch. LATERAL:
        # one index range scan per stream, whatever the planner thinks of the table's size.
        low: dict[str, int] = {}
        high: dict[str, int] = {}
        for e in events:
            low[e.stream] = min(low.get(e.stream, e.seq), e.seq - 1)
            high[e.stream] = max(high.get(e.stream, e.seq), e.seq)
        cur.execute(
            "SELECT a.stream, a.seq, a.hash"
            " FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS w(stream, low, high),"
            " LATERAL (SELECT stream, seq, hash FROM audit_events WHERE region = %s"
            "          AND stream = w.stream AND seq BETWEEN w.low AND w.high) AS a",
            (list(low), list(low.values()), [high[stream] for stream in low], self.region),
        )
        hashes: dict[tuple[str, int], str] = {(s, seq): h for s, seq, h in cur.fetchall()}
        rows = []
        for event in sorted(events, key=lambda e: (e.stream, e.seq)):
            prev = (
                chain.FIRST_PREV_HASH
                if event.seq == 1
                else hashes.get((event.stream, event.seq - 1))
            )
            known = hashes.get((event.stream, event.seq))
            if known is not None:
                # Already stored (or earlier in this batch): the first version stays.
                if prev is not None and chain.event_hash(prev, event, self.region) != known:
                    log.warning(
                        "audit event %s seq %d differs from the one already written; kept the"
                        " first",
                        event.stream,
                        event.seq,
                    )
                continue
            if prev is None:
                raise ChainGapError(
                    f"audit stream {event.stream!r} of region {self.region!r}: cannot write seq"
                    f" {event.seq}, seq {event.seq - 1} is neither stored nor in this batch"
                )
            row = self._event_row(event, prev)
            hashes[(event.stream, event.seq)] = row["hash"]
            rows.append(row)
        return rows

    def _tip(self, cur: psycopg.Cursor[Any], stream: str) -> tuple[int, str]:
        """Seq and hash of a stream's newest event ((0, "") if none); hold the stream's lock."""
        tip = cur.execute(
            "SELECT seq, hash FROM audit_events WHERE region = %s AND stream = %s"
            " ORDER BY seq DESC LIMIT 1",
            (self.region, stream),
        ).fetchone()
        return (tip[0], tip[1]) if tip else (0, chain.FIRST_PREV_HASH)

    def _row(self, record: Any) -> dict[str, Any]:
        # Shallow, unlike dataclasses.asdict, which deep-copies every value.
        fields = dataclasses.fields(record)
        return {"region": self.region, **{f.name: getattr(record, f.name) for f in fields}}

    def _event_row(self, event: AuditEvent, prev_hash: str) -> dict[str, Any]:
        digest = chain.event_hash(prev_hash, event, self.region)
        return {**self._row(event), "prev_hash": prev_hash, "hash": digest}

    def _usage_row(self, record: UsageRecord) -> dict[str, Any]:
        billed_at = record.finished_at or record.started_at or datetime.now(UTC)
        return {**self._row(record), "billed_at": billed_at}

    # --- reads ---

    def versions(
        self, kind: str, namespace: str, name: str
    ) -> list[tuple[int, str, datetime, dict[str, Any]]]:
        """(version, spec_hash, at, spec) of every stored spec of the object, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT version, spec_hash, at, spec FROM spec_versions"
                " WHERE region = %s AND kind = %s AND namespace = %s AND name = %s"
                " ORDER BY version",
                (self.region, kind, namespace, name),
            ).fetchall()
        return [
            (version, spec_hash, at, unescape_json(spec)) for version, spec_hash, at, spec in rows
        ]

    def timeline(
        self, namespace: str, run_name: str, *, all_regions: bool = False
    ) -> list[dict[str, Any]]:
        """Audit events of every Run of that name (oldest uid first), each in seq order."""
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM audit_events"
                " WHERE namespace = %(namespace)s AND name = %(name)s AND kind = 'Run'"
                " AND (%(region)s::text IS NULL OR region = %(region)s)"
                " ORDER BY min(at) OVER (PARTITION BY region, stream), region, stream, seq",
                {
                    "namespace": namespace,
                    "name": run_name,
                    "region": self._region_filter(all_regions),
                },
            )
            return [unescape_row(row) for row in cur.fetchall()]

    def usage(
        self, account: str, since: datetime, *, all_regions: bool = False
    ) -> list[dict[str, Any]]:
        """Totals per UTC day, agent and currency of the account's step attempts billed since
        `since`: day, agent, attempts, wall_seconds, cost, currency."""
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT (billed_at AT TIME ZONE 'UTC')::date AS day, agent,"
                " count(*) AS attempts, sum(wall_seconds) AS wall_seconds, sum(cost) AS cost,"
                " currency"
                " FROM usage_records"
                " WHERE account = %(account)s AND billed_at >= %(since)s"
                " AND (%(region)s::text IS NULL OR region = %(region)s)"
                " GROUP BY day, agent, currency ORDER BY day, agent, currency",
                {
                    "account": escape(account),
                    "since": since,
                    "region": self._region_filter(all_regions),
                },
            )
            return [unescape_row(row) for row in cur.fetchall()]

    def verify(self, stream: str | None = None) -> list[str]:
        """Recompute the chain of every (region, stream) in the database, or of one stream in
        every region: [] when intact, else one message per broken chain naming its first bad
        row. (Removing the newest events of a stream leaves a valid chain: it has no anchor.)"""
        problems = []
        # A named cursor streams the rows from the server instead of loading the whole table.
        with (
            self._connection() as conn,
            conn.transaction(),
            conn.cursor("nofx_verify", row_factory=dict_row) as cur,
        ):
            cur.itersize = 2000
            cur.execute(
                "SELECT * FROM audit_events WHERE %(stream)s::text IS NULL OR stream = %(stream)s"
                " ORDER BY region, stream, seq",
                {"stream": stream},
            )
            for (region, name), rows in groupby(
                cur, key=lambda row: (row["region"], row["stream"])
            ):
                problem = _first_break(rows)
                if problem:
                    problems.append(f"region {region} stream {name} {problem}")
        return problems

    def _region_filter(self, all_regions: bool) -> str | None:
        return None if all_regions else self.region


def _first_break(rows: Iterable[dict[str, Any]]) -> str | None:
    """'seq N: what is wrong' for the first row of one stream's rows (in seq order) that does
    not continue the chain, or None."""
    expected, prev = 1, chain.FIRST_PREV_HASH
    for row in rows:
        seq = row["seq"]
        if seq != expected:
            return f"seq {seq}: gap, seq {expected} is missing"
        if row["prev_hash"] != prev:
            return f"seq {seq}: prev_hash mismatch, it does not match the hash of seq {seq - 1}"
        event = AuditEvent(**{field: row[field] for field in EVENT_FIELDS})
        if chain.event_hash(prev, event, row["region"]) != row["hash"]:
            return f"seq {seq}: hash mismatch, the row was changed after it was written"
        expected, prev = seq + 1, row["hash"]
    return None


def _registry_stream(kind: str, namespace: str, name: str) -> str:
    # Runs have their own numbering in the operator's outbox and go through write().
    if kind not in ("Agent", "Template"):
        raise ValueError(f"spec versions and deletions are for Agents and Templates, not {kind!r}")
    return chain.stream_name(kind, namespace, name, uid="")
