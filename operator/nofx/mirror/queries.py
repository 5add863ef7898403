"""What the CLI reads of the mirror: a Run's timeline, an account's usage totals, and an Agent's
or Template's spec versions. Values come back unescaped (see escaping.py).

Each function takes a connection and the region to read; region None (where offered) reads
every region of a global database.
"""

from __future__ import annotations

from datetime import datetime
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
    conn: psycopg.Connection[Any], region: str | None, account: str, since: datetime
) -> list[dict[str, Any]]:
    """Totals per UTC day, agent and currency of the account's step attempts billed since
    `since`: day, agent, attempts, wall_seconds, cost, currency."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT (billed_at AT TIME ZONE 'UTC')::date AS day, agent,"
            " count(*) AS attempts, sum(wall_seconds) AS wall_seconds, sum(cost) AS cost,"
            " currency"
            " FROM usage_records"
            " WHERE account = %(account)s AND billed_at >= %(since)s"
            " AND (%(region)s::text IS NULL OR region = %(region)s)"
            " GROUP BY day, agent, currency ORDER BY day, agent, currency",
            {"account": escape(account), "since": since, "region": region},
        )
        return [unescape_row(row) for row in cur.fetchall()]


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
