"""What the CLI reads of the mirror: a Run's timeline, an account's usage totals, and an Agent's
or Template's spec versions. Values come back unescaped (see escaping.py).

Each function takes a connection and the region to read; region None (where offered) reads
every region of a global database.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

import psycopg
from psycopg.rows import dict_row

from nofx.mirror.escaping import escape, unescape, unescape_json, unescape_row


class StoredVersion(NamedTuple):
    version: int
    spec_hash: str
    at: datetime
    spec: dict[str, Any]
    actor: str | None  # who changed the spec, as the API server authenticated them


def versions(
    conn: psycopg.Connection[Any], region: str, kind: str, namespace: str, name: str
) -> list[StoredVersion]:
    """Every stored spec of the object, oldest first."""
    rows = conn.execute(
        "SELECT version, spec_hash, at, spec, actor FROM spec_versions"
        " WHERE region = %s AND kind = %s AND namespace = %s AND name = %s"
        " ORDER BY version",
        (region, kind, namespace, name),
    ).fetchall()
    return [
        StoredVersion(version, spec_hash, at, unescape_json(spec), actor and unescape(actor))
        for version, spec_hash, at, spec, actor in rows
    ]


def timeline(
    conn: psycopg.Connection[Any], region: str | None, namespace: str, run_name: str
) -> list[dict[str, Any]]:
    """Audit events of every Run of that name (oldest uid first), each in seq order."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM audit_events"
            " WHERE namespace = %(namespace)s AND name = %(name)s AND kind = 'Run'"
            " AND (%(region)s::text IS NULL OR region = %(region)s)"
            " ORDER BY min(at) OVER (PARTITION BY region, stream), region, stream, seq",
            {"namespace": namespace, "name": run_name, "region": region},
        )
        return [unescape_row(row) for row in cur.fetchall()]


def usage(
    conn: psycopg.Connection[Any], region: str | None, account: str | None, since: datetime
) -> list[dict[str, Any]]:
    """Totals per UTC day, account, agent, Kueue queue and currency of the step attempts billed
    since `since` (of one account, or of all with None): day, account, agent, queue (None: not
    queued), attempts, wall_seconds, queued_seconds (waiting for admission, not billed; None
    if not queued), wall_cost, token_cost, cost (the two added up), currency."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT (billed_at AT TIME ZONE 'UTC')::date AS day, account, agent, queue,"
            " count(*) AS attempts, sum(wall_seconds) AS wall_seconds,"
            " sum(queued_seconds) AS queued_seconds, sum(cost) AS wall_cost,"
            " sum(token_cost) AS token_cost, sum(cost + token_cost) AS cost, currency"
            " FROM usage_records"
            f" WHERE {_USAGE_FILTER}"
            " GROUP BY day, account, agent, queue, currency"
            " ORDER BY day, account, agent, queue NULLS FIRST, currency",
            _usage_parameters(region, account, since),
        )
        return [unescape_row(row) for row in cur.fetchall()]


def usage_by_model(
    conn: psycopg.Connection[Any], region: str | None, account: str | None, since: datetime
) -> list[dict[str, Any]]:
    """Totals per UTC day, account, agent, model and currency since `since`: for each model,
    its tokens and their cost; beside them, with model None, the wall time and its cost.
    Keys: day, account, agent, model, attempts, wall_seconds, input_tokens, output_tokens,
    cached_tokens, cost, currency."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT (billed_at AT TIME ZONE 'UTC')::date AS day, account, agent,"
            " NULL::text AS model, count(*) AS attempts, sum(wall_seconds) AS wall_seconds,"
            " 0::numeric AS input_tokens, 0::numeric AS output_tokens,"
            " 0::numeric AS cached_tokens, sum(cost) AS cost, currency"
            f" FROM usage_records WHERE {_USAGE_FILTER}"
            " GROUP BY day, account, agent, currency"
            " UNION ALL"
            " SELECT (billed_at AT TIME ZONE 'UTC')::date AS day, account, agent, model,"
            " count(*), 0::double precision, sum(input_tokens), sum(output_tokens),"
            " sum(cached_tokens), sum(cost), currency"
            f" FROM token_usage WHERE {_USAGE_FILTER}"
            " GROUP BY day, account, agent, model, currency"
            " ORDER BY day, account, agent, model NULLS FIRST, currency",
            _usage_parameters(region, account, since),
        )
        rows = [unescape_row(row) for row in cur.fetchall()]
    for row in rows:
        for key in ("input_tokens", "output_tokens", "cached_tokens"):
            row[key] = int(row[key])  # sum(bigint) is numeric
    return rows


def spent_since(
    conn: psycopg.Connection[Any], region: str, since: datetime
) -> dict[tuple[str, str], Decimal]:
    """(account, currency) → the cost (wall time and tokens) billed since `since`."""
    rows = conn.execute(
        "SELECT account, currency, sum(cost + token_cost) FROM usage_records"
        " WHERE region = %s AND billed_at >= %s GROUP BY account, currency",
        (region, since),
    ).fetchall()
    return {(unescape(account), currency): total for account, currency, total in rows}


_USAGE_FILTER = (
    "billed_at >= %(since)s AND (%(account)s::text IS NULL OR account = %(account)s)"
    " AND (%(region)s::text IS NULL OR region = %(region)s)"
)


def _usage_parameters(region: str | None, account: str | None, since: datetime) -> dict[str, Any]:
    return {"account": escape(account) if account else None, "since": since, "region": region}


def run_usage(conn: psycopg.Connection[Any], region: str, run_uid: str) -> list[dict[str, Any]]:
    """The usage record of every step attempt of one Run."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM usage_records WHERE region = %s AND run_uid = %s"
            " ORDER BY step, item_key, attempt",
            (region, run_uid),
        )
        return [unescape_row(row) for row in cur.fetchall()]


def finished_runs(
    conn: psycopg.Connection[Any], region: str, since: datetime, until: datetime
) -> list[tuple[str, str, str]]:
    """(namespace, name, uid) of the Runs that finished in [since, until), oldest first."""
    rows = conn.execute(
        "SELECT namespace, name, uid FROM runs WHERE region = %s"
        " AND finished_at >= %s AND finished_at < %s ORDER BY finished_at",
        (region, since, until),
    ).fetchall()
    return [(unescape(namespace), unescape(name), uid) for namespace, name, uid in rows]


class CacheEntry(NamedTuple):
    """A stored result of a cached step (migration 0005)."""

    namespace: str
    run_name: str
    run_uid: str
    step: str
    outputs: dict[str, Any]
    created_at: datetime


def cache_lookup(
    conn: psycopg.Connection[Any],
    region: str,
    key: str,
    namespace: str,
    account: str,
    since: datetime,
) -> CacheEntry | None:
    """The newest entry under key created after since. The key covers the namespace and
    account already; they are compared too, so that no hit can cross them."""
    row = conn.execute(
        "SELECT namespace, run_name, run_uid, step, outputs, created_at FROM step_cache"
        " WHERE region = %s AND cache_key = %s AND namespace = %s AND account = %s"
        " AND created_at > %s ORDER BY created_at DESC LIMIT 1",
        (region, key, escape(namespace), escape(account), since),
    ).fetchone()
    if row is None:
        return None
    found_namespace, run_name, run_uid, step, outputs, created_at = row
    return CacheEntry(
        unescape(found_namespace), unescape(run_name), run_uid, unescape(step),
        unescape_json(outputs), created_at,
    )  # fmt: skip
