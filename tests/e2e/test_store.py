"""The Postgres mirror's Store against real Postgres servers: migrations, idempotent batched
writes, hash chains and tampering, usage totals, spec versions, and replication of several
regions into one global database."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from nofx.mirror import chain
from nofx.mirror.errors import ChainGapError, Rejected
from nofx.mirror.keys import KeyRing
from nofx.mirror.records import AuditEvent, RunRecord, SpecVersion, TokenRecord, UsageRecord
from nofx.mirror.store import Store
from nofx_dev.postgres import PostgresServer

from ..conftest import new_postgres

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
ALL_MIGRATIONS = [
    "0001_initial",
    "0002_step_attempts",
    "0003_audit_keys",
    "0004_token_usage",
    "0005_step_cache",
    "0006_usage_queue",
]
MIRRORED = {
    "runs": "region, uid",
    "audit_events": "region, stream, seq",
    "usage_records": "region, run_uid, step, item_key, attempt",
    "spec_versions": "region, kind, namespace, name, version",
    "audit_checkpoints": "region, stream, seq",
    "token_usage": "region, run_uid, step, item_key, attempt, model",
}


def fresh_database(server: PostgresServer) -> str:
    """A new empty database on the server; its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    return fresh_database(postgres)


@pytest.fixture
def store(dsn: str) -> Iterator[Store]:
    with Store(dsn, "eu") as store:
        store.migrate()
        yield store


def run_events(
    uid: str, seqs: range | list[int], name: str = "demo", message: str = "event"
) -> list[AuditEvent]:
    return [
        AuditEvent(
            stream=f"run/{uid}",
            seq=seq,
            at=T0 + timedelta(seconds=seq),
            kind="Run",
            namespace="team-a",
            name=name,
            uid=uid,
            reason="StepStarted",
            message=f"{message} {seq}",
            step="build",
            item_index=None,
            attempt=1,
            from_phase="Pending",
            to_phase="Running",
        )
        for seq in seqs
    ]


def usage_record(**overrides: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "run_uid": "r1",
        "namespace": "team-a",
        "run_name": "demo",
        "step": "build",
        "item_index": None,
        "attempt": 1,
        "job_name": "demo-build-1",
        "account": "acme",
        "agent": "coder",
        "started_at": T0,
        "finished_at": T0 + timedelta(seconds=90),
        "wall_seconds": 90.0,
        "cpu_request": "500m",
        "memory_request": "512Mi",
        "cost": Decimal("0.150000"),
        "currency": "USD",
        **overrides,
    }
    return UsageRecord(**fields)


def rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params).fetchall()


def superuser_edit(dsn: str, statement: str, *params: Any) -> None:
    """Bypass the append-only triggers the way a superuser can (ordinary triggers do not fire
    in replica mode)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(statement, params)


def test_migrate_applies_once_even_when_run_twice_and_concurrently(dsn: str) -> None:
    results: list[list[str]] = []
    start = threading.Barrier(2)

    def migrate() -> None:
        with Store(dsn, "eu") as store:
            start.wait()
            results.append(store.migrate())

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [[], ALL_MIGRATIONS]
    with Store(dsn, "eu") as store:
        assert store.migrate() == []
    assert rows(dsn, "SELECT name FROM schema_migrations ORDER BY name") == [
        (name,) for name in ALL_MIGRATIONS
    ]


def test_batches_chain_per_stream_and_rewrites_change_nothing(store: Store, dsn: str) -> None:
    a, b = run_events("a", range(1, 6)), run_events("b", range(1, 4))
    # Both streams in one batch, out of order, then the rest in several batches.
    store.write([a[1], b[0], a[0], b[1]], [], [])
    store.write([a[2]], [], [])
    store.write([a[3], a[4], b[2]], [], [])
    # A crashed writer sends overlapping batches again.
    store.write(a + b, [], [])
    store.write([a[4], b[2]], [], [])

    stored = rows(dsn, "SELECT stream, seq, prev_hash, hash FROM audit_events ORDER BY stream, seq")
    assert [(stream, seq) for stream, seq, _, _ in stored] == [
        *(("run/a", seq) for seq in range(1, 6)),
        *(("run/b", seq) for seq in range(1, 4)),
    ]
    # Recomputed here from the events as given, not from the table.
    for events in (a, b):
        prev = ""
        for event, (_, _, prev_hash, digest) in zip(
            events, [row for row in stored if row[0] == events[0].stream], strict=True
        ):
            assert prev_hash == prev
            assert digest == chain.event_hash(prev, event, "eu")
            prev = digest
    assert store.verify().problems == []
    assert store.verify("run/a").problems == []


def test_a_different_event_under_a_stored_seq_keeps_the_first_and_the_chain(
    store: Store, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.write(run_events("a", [1, 2]), [], [])
    store.write(run_events("a", [2, 3], message="regenerated"), [], [])
    assert rows(dsn, "SELECT seq, message FROM audit_events ORDER BY seq") == [
        (1, "event 1"),
        (2, "event 2"),
        (3, "regenerated 3"),
    ]
    assert "run/a seq 2 differs from the one already written" in caplog.text
    assert store.verify().problems == []


def test_a_gap_raises_and_writes_nothing_of_the_batch(store: Store, dsn: str) -> None:
    store.write(run_events("a", [1]), [], [])
    batch = run_events("a", [3]) + run_events("b", [1])
    with pytest.raises(ChainGapError, match=r"'run/a'.*seq 3, seq 2 is neither stored"):
        store.write(batch, [usage_record()], [])
    with pytest.raises(ChainGapError, match="seq 1 is neither"):
        store.write(run_events("c", [2, 3]), [], [])
    assert rows(dsn, "SELECT stream, seq FROM audit_events") == [("run/a", 1)]
    assert rows(dsn, "SELECT count(*) FROM usage_records") == [(0,)]
    assert store.verify().problems == []


def test_nul_is_stored_escaped_read_back_faithfully_and_verifies(store: Store, dsn: str) -> None:
    # Postgres text and jsonb cannot hold NUL; "\u2400" (the escape character) must survive too.
    message = "exit\x00code \u2400 kept"
    event = dataclasses.replace(run_events("a", [1], name="nul")[0], message=message)
    store.write([event], [usage_record(agent="co\x00der")], [])
    store.write([event], [], [])  # the same entry again: recognised as stored, nothing added
    assert rows(dsn, "SELECT message FROM audit_events") == [("exit\u24000code \u2400\u2400 kept",)]
    assert store.verify().problems == []
    assert [e["message"] for e in store.timeline("team-a", "nul")] == [message]
    assert [row["agent"] for row in store.usage("acme", T0)] == ["co\x00der"]

    spec = {"description": "a\x00b", "tools": [{"na\x00me": "\u2400"}]}
    version = SpecVersion("Agent", "team-a", "coder", "a1", spec, "h1", T0, "alice")
    assert store.record_version(version) == 1
    assert store.record_version(version) is None  # the same spec is recognised
    [stored] = store.versions("Agent", "team-a", "coder")
    assert (stored.spec, stored.actor) == (spec, "alice")
    assert store.verify().problems == []


def test_a_value_postgres_refuses_raises_rejected_and_writes_nothing(
    store: Store, dsn: str
) -> None:
    too_big = usage_record(cost=Decimal("1e200000"))  # beyond numeric's 131072 digits
    with pytest.raises(Rejected, match="numeric"):
        store.write(run_events("a", [1]), [too_big], [])
    assert rows(dsn, "SELECT count(*) FROM audit_events") == [(0,)]
    store.write(run_events("a", [1]), [usage_record()], [])  # the rest goes through alone
    assert rows(dsn, "SELECT count(*) FROM usage_records") == [(1,)]


@pytest.mark.parametrize(
    ("record", "words"),
    [
        # Beyond 64 bits: past orjson, refused by Postgres.
        (usage_record(attempt=2**70), "out of range for type integer"),
        # JSON has no NaN: null, into a NOT NULL column.
        (usage_record(wall_seconds=float("nan")), '"wall_seconds"'),
    ],
    ids=["integer beyond 64 bits", "NaN"],
)
def test_a_value_json_cannot_carry_as_is_is_refused_not_lost(
    store: Store, dsn: str, record: UsageRecord, words: str
) -> None:
    with pytest.raises(Rejected, match=words):  # the Mirrored condition quotes these words
        store.write(run_events("a", [1]), [record], [])
    assert rows(dsn, "SELECT count(*) FROM audit_events") == [(0,)]
    assert rows(dsn, "SELECT count(*) FROM usage_records") == [(0,)]


def test_verify_names_the_first_edited_or_missing_row(store: Store, dsn: str) -> None:
    store.write(run_events("a", range(1, 5)) + run_events("b", range(1, 5)), [], [])
    store.write(run_events("c", range(1, 5)) + run_events("d", range(1, 5)), [], [])
    assert store.verify().problems == []

    # The append-only trigger refuses ordinary edits.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        rows(dsn, "UPDATE audit_events SET message = 'x' WHERE stream = 'run/a'")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        rows(dsn, "DELETE FROM audit_events WHERE stream = 'run/a'")

    edit = "UPDATE audit_events SET message = %s WHERE stream = %s AND seq = %s"
    superuser_edit(dsn, edit, "nothing to see", "run/a", 2)
    superuser_edit(dsn, "DELETE FROM audit_events WHERE stream = 'run/b' AND seq = 3")
    # A forger who knows the algorithm rewrites a row and its hash: the next link breaks.
    forged = dataclasses.replace(run_events("c", [2])[0], message="forged")
    prev = rows(dsn, "SELECT hash FROM audit_events WHERE stream = 'run/c' AND seq = 1")[0][0]
    superuser_edit(
        dsn,
        "UPDATE audit_events SET message = %s, hash = %s WHERE stream = 'run/c' AND seq = 2",
        "forged",
        chain.event_hash(prev, forged, "eu"),
    )

    assert store.verify().problems == [
        "region eu stream run/a seq 2: hash mismatch, the row was changed after it was written",
        "region eu stream run/b seq 4: gap, seq 3 is missing (deleted)",
        "region eu stream run/c seq 3: prev_hash mismatch, it does not match the hash of seq 2",
    ]
    assert store.verify("run/a").problems == [store.verify().problems[0]]
    assert store.verify("run/d").problems == []


def test_usage_totals_per_agent_and_utc_day(store: Store) -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    records = [
        usage_record(step="build", finished_at=day1, wall_seconds=90.0, cost=Decimal("0.15")),
        usage_record(step="test", finished_at=day1, wall_seconds=30.5, cost=Decimal("0.05")),
        # A fan-out: item 0 and the null item are different attempts.
        usage_record(step="test", item_index=0, finished_at=day1, wall_seconds=1.5),
        usage_record(step="review", agent="reviewer", finished_at=day1, cost=Decimal("1")),
        usage_record(step="build", attempt=2, finished_at=day2, cost=Decimal("0.25")),
        # Not finished: billed when it started.
        usage_record(step="lint", finished_at=None, started_at=day2, cost=Decimal("0.01")),
        usage_record(step="old", finished_at=T0 - timedelta(days=3)),
        usage_record(run_uid="r2", account="other", finished_at=day1),
    ]
    store.write([], records, [])
    store.write([], records[:3], [])  # a rewrite counts nothing twice

    totals = store.usage("acme", T0 - timedelta(hours=1))
    keys = ("day", "agent", "attempts", "wall_seconds", "cost", "currency")
    assert [tuple(row[key] for key in keys) for row in totals] == [
        (date(2025, 3, 1), "coder", 3, 122.0, Decimal("0.35"), "USD"),
        (date(2025, 3, 1), "reviewer", 1, 90.0, Decimal("1"), "USD"),
        (date(2025, 3, 2), "coder", 2, 180.0, Decimal("0.26"), "USD"),
    ]
    assert {row["account"] for row in totals} == {"acme"}
    assert {row["token_cost"] for row in totals} == {Decimal(0)}
    every = store.usage(None, T0 - timedelta(hours=1))
    assert [(row["account"], row["agent"]) for row in every if row["day"] == day1.date()] == [
        ("acme", "coder"), ("acme", "reviewer"), ("other", "coder"),
    ]  # fmt: skip
    with Store(store.dsn, "us") as us:
        assert us.usage("acme", T0 - timedelta(days=5)) == []
    assert store.usage("acme", T0 + timedelta(days=2)) == []


def test_tokens_are_stored_per_model_and_summed_by_account_agent_model_and_day(
    store: Store, dsn: str
) -> None:
    sonnet = TokenRecord("sonnet", 1000, 200, 5000, Decimal("0.0075"))
    mini = TokenRecord("mini\x00x", 10, 0, 0, Decimal("0.0000015"))  # NUL: stored escaped
    records = [
        usage_record(step="plan", cost=Decimal("0.1"), tokens=(sonnet, mini)),
        usage_record(step="code", cost=Decimal("0.2"), tokens=(sonnet,)),
        usage_record(step="eu", agent="euro", currency="EUR", tokens=(sonnet,)),
        usage_record(step="plain", cost=Decimal("0.3")),
    ]
    store.write([], records, [])
    store.write([], records, [])  # a rewrite stores nothing twice
    assert rows(dsn, "SELECT count(*), sum(input_tokens) FROM token_usage") == [(4, 3010)]
    assert rows(dsn, "SELECT token_cost FROM usage_records WHERE step = 'plan'") == [
        (Decimal("0.0075015"),)
    ]
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        rows(dsn, "UPDATE token_usage SET cost = 0")

    since = T0 - timedelta(hours=1)
    by_model = store.usage_by_model("acme", since)
    keys = ("agent", "model", "attempts", "wall_seconds", "input_tokens", "output_tokens",
            "cached_tokens", "cost", "currency")  # fmt: skip
    assert [tuple(row[key] for key in keys) for row in by_model] == [
        ("coder", None, 3, 270.0, 0, 0, 0, Decimal("0.6"), "USD"),  # the wall time
        ("coder", "mini\x00x", 1, 0.0, 10, 0, 0, Decimal("0.0000015"), "USD"),
        ("coder", "sonnet", 2, 0.0, 2000, 400, 10000, Decimal("0.0150"), "USD"),
        ("euro", None, 1, 90.0, 0, 0, 0, Decimal("0.15"), "EUR"),
        ("euro", "sonnet", 1, 0.0, 1000, 200, 5000, Decimal("0.0075"), "EUR"),
    ]
    assert {(row["day"], row["account"]) for row in by_model} == {(date(2025, 3, 1), "acme")}
    # Per agent, cost is the wall time's and the tokens' together; never across currencies.
    totals = {(row["agent"], row["currency"]): row for row in store.usage("acme", since)}
    assert totals["coder", "USD"]["token_cost"] == Decimal("0.0150015")
    assert totals["coder", "USD"]["cost"] == Decimal("0.6150015")
    assert totals["euro", "EUR"]["cost"] == Decimal("0.1575")
    assert store.usage_by_model("other", since) == []


def test_spec_versions_deletions_and_re_creation(store: Store) -> None:
    def version(spec: dict[str, Any], uid: str = "u1", minutes: int = 0) -> SpecVersion:
        return SpecVersion(
            kind="Template",
            namespace="team-a",
            name="ship",
            uid=uid,
            spec=spec,
            spec_hash=f"h-{sorted(spec.items())}",
            at=T0 + timedelta(minutes=minutes),
            actor="alice",
        )

    v1, v2 = version({"steps": ["a"]}), version({"steps": ["a", "b"]}, minutes=1)
    assert store.record_version(v1) == 1
    assert store.record_version(v1) is None
    assert store.record_version(v2) == 2
    assert store.record_version(v2) is None
    assert store.record_version(version({"steps": ["a"]}, minutes=2)) == 3  # a rollback
    stored = store.versions("Template", "team-a", "ship")
    assert [(v.version, v.spec_hash, v.spec) for v in stored] == [
        (1, v1.spec_hash, {"steps": ["a"]}),
        (2, v2.spec_hash, {"steps": ["a", "b"]}),
        (3, v1.spec_hash, {"steps": ["a"]}),
    ]
    assert store.versions("Agent", "team-a", "ship") == []

    store.record_deletion("Template", "team-a", "ship", "u1", T0 + timedelta(minutes=3), "bob")
    store.record_deletion("Template", "team-a", "ship", "u1", T0 + timedelta(minutes=4), "bob")
    # Created again under the same name with the same spec: a new object, a new version.
    assert store.record_version(version({"steps": ["a"]}, uid="u2", minutes=5)) == 4

    with psycopg.connect(store.dsn) as conn:
        events = conn.execute(
            "SELECT seq, reason, uid, spec_hash, actor FROM audit_events"
            " WHERE stream = 'template/team-a/ship' ORDER BY seq"
        ).fetchall()
    assert events == [
        (1, "Created", "u1", v1.spec_hash, "alice"),
        (2, "Updated", "u1", v2.spec_hash, "alice"),
        (3, "Updated", "u1", v1.spec_hash, "alice"),
        (4, "Deleted", "u1", None, "bob"),
        (5, "Created", "u2", v1.spec_hash, "alice"),
    ]
    assert store.verify().problems == []
    with pytest.raises(ValueError, match="not 'Run'"):
        store.record_deletion("Run", "team-a", "demo", "r1", T0, None)


def test_timeline_lists_every_uid_of_a_run_oldest_first_in_seq_order(store: Store) -> None:
    old = run_events("old", range(1, 4))
    new = [dataclasses.replace(e, at=e.at + timedelta(hours=1)) for e in run_events("new", [1, 2])]
    other = run_events("x", [1], name="another")
    # The newer Run's stream sorts first by name, and arrives first: order is by time.
    store.write(new[:1] + old[:2] + other, [], [])
    store.write(new[1:] + old[2:], [], [])

    timeline = store.timeline("team-a", "demo")
    assert [(e["uid"], e["seq"]) for e in timeline] == [
        ("old", 1),
        ("old", 2),
        ("old", 3),
        ("new", 1),
        ("new", 2),
    ]
    first = timeline[0]
    assert set(first) == {f.name for f in dataclasses.fields(AuditEvent)} | {
        "region",
        "prev_hash",
        "hash",
        "key_id",
    }
    assert first["region"] == "eu" and first["at"] == old[0].at and first["prev_hash"] == ""
    with Store(store.dsn, "us") as us:
        assert us.timeline("team-a", "demo") == []
        assert len(us.timeline("team-a", "demo", all_regions=True)) == 5


def test_runs_upsert_never_moves_a_finished_run_back(store: Store, dsn: str) -> None:
    running = RunRecord(
        uid="r1",
        namespace="team-a",
        name="demo",
        template="ship",
        account="acme",
        phase="Running",
        created_at=T0,
        started_at=T0 + timedelta(seconds=1),
        finished_at=None,
    )
    succeeded = dataclasses.replace(
        running, phase="Succeeded", finished_at=T0 + timedelta(minutes=1)
    )
    select = "SELECT phase, template, started_at, finished_at FROM runs WHERE uid = 'r1'"

    store.write([], [], [dataclasses.replace(running, phase="Pending", started_at=None)])
    # Applied in order; a null field erases nothing.
    store.write([], [], [running, dataclasses.replace(running, template=None, started_at=None)])
    assert rows(dsn, select) == [("Running", "ship", running.started_at, None)]
    store.write([], [], [succeeded])
    store.write([], [], [running])
    store.write([], [], [dataclasses.replace(running, phase="Failed", finished_at=T0)])
    assert rows(dsn, select) == [("Succeeded", "ship", running.started_at, succeeded.finished_at)]


def psql(dsn: str, file: Path, **variables: str) -> None:
    """Run a manifest the way its header says: psql, each statement on its own."""
    binary = shutil.which("psql")
    assert binary, "psql is needed to run manifests/postgres/*.sql"
    argv = [binary, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(file)]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"psql -f {file.name} failed: {result.stderr}"


def table_rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    return rows(dsn, f"SELECT * FROM {table} ORDER BY {MIRRORED[table]}")


def region_workload(store: Store, prefix: str, minutes: int) -> None:
    """A little of everything: Run events, usage, a Run upsert, spec versions, a deletion."""
    at = T0 + timedelta(minutes=minutes)
    uid = f"{prefix}-{minutes}"
    store.write(
        run_events(uid, range(1, 4)),
        [
            usage_record(run_uid=uid, tokens=(TokenRecord("sonnet", 5, 6, 7, Decimal("0.1")),)),
            usage_record(run_uid=uid, step="test", item_index=0),
        ],
        [RunRecord(uid, "team-a", "demo", "ship", "acme", "Running", at, at, None)],
    )
    store.write(
        run_events(uid, range(3, 6)),
        [],
        [RunRecord(uid, "team-a", "demo", "ship", "acme", "Succeeded", at, at, at)],
    )
    for n in range(2):
        spec = {"image": f"coder:{minutes}.{n}", "tokenSecretRef": {"name": "llm-token"}}
        store.record_version(
            SpecVersion("Agent", "team-a", "coder", "a1", spec, f"{minutes}.{n}", at, "alice")
        )
    store.record_deletion("Template", "team-a", f"tpl-{minutes}", "t1", at, "bob")


def test_regions_replicate_into_one_global_database_exactly_once() -> None:
    # More workers than the default 4: two subscriptions, each with table-sync workers.
    servers = {
        "eu": new_postgres(),
        "us": new_postgres(),
        "global": new_postgres(max_logical_replication_workers="8", max_worker_processes="16"),
    }
    stores: list[Store] = []
    try:
        for server in servers.values():  # from this thread: servers die with their starter
            server.start()
        dsns = {region: server.dsn for region, server in servers.items()}
        eu, us, global_store = (Store(dsns[region], region) for region in servers)
        stores += [eu, us, global_store]
        for store in stores:
            assert store.migrate() == ALL_MIGRATIONS

        # Rows written before the subscription arrive by the initial copy, later ones by
        # streaming.
        region_workload(eu, "eu", 0)
        region_workload(us, "us", 0)
        for region in ("eu", "us"):
            psql(dsns[region], REPO / "manifests/postgres/publication.sql")
            psql(dsns[region], REPO / "manifests/postgres/publication.sql")  # safe twice
        conninfo = {
            f"{region}_conninfo": f"host=127.0.0.1 port={servers[region].port} dbname=nofx "
            "user=nofx"
            for region in ("eu", "us")
        }
        psql(dsns["global"], REPO / "manifests/postgres/global-subscription.sql", **conninfo)
        region_workload(eu, "eu", 1)
        region_workload(us, "us", 1)

        def replicated() -> bool:
            return all(
                table_rows(dsns["global"], table)
                == sorted(
                    table_rows(dsns["eu"], table) + table_rows(dsns["us"], table),
                    key=lambda row: row[0],  # by region, stable
                )
                for table in MIRRORED
            )

        wait_for(replicated, 20, "the global database to hold every row of eu and us")
        by_region = rows(dsns["global"], "SELECT region, count(*) FROM audit_events GROUP BY 1")
        assert sorted(by_region) == [("eu", 16), ("us", 16)]
        assert global_store.verify().problems == []
        assert len(global_store.timeline("team-a", "demo", all_regions=True)) == 4 * 5

        # The append-only trigger does not stop the apply worker: an edit made in a region
        # (by a superuser) reaches the global database, whose verify names the row.
        superuser_edit(
            dsns["us"],
            "UPDATE audit_events SET message = 'edited' WHERE stream = 'run/us-1' AND seq = 4",
        )
        edited = "the edit to reach the global database"
        wait_for(lambda: bool(global_store.verify().problems), 20, edited)
        assert global_store.verify().problems == [
            "region us stream run/us-1 seq 4: hash mismatch, the row was changed after it was "
            "written"
        ]
    finally:
        for store in stores:
            store.close()
        for server in (servers["global"], servers["eu"], servers["us"]):
            server.stop()
            shutil.rmtree(server.directory.parent, ignore_errors=True)


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def test_registry_heads_are_signed_when_changed_and_a_deleted_newest_row_shows(dsn: str) -> None:
    with Store(dsn, "eu", keys=KeyRing({"k1": b"k" * 32}, "k1")) as store:
        store.migrate()
        for n in (1, 2):
            spec = {"image": f"coder:{n}"}
            store.record_version(SpecVersion("Agent", "team-a", "coder", "a1", spec, f"h{n}", T0))
        assert store.checkpoint_registry() == 1
        assert store.checkpoint_registry() == 0  # nothing changed since
        store.record_deletion("Agent", "team-a", "coder", "a1", T0, "bob")
        assert store.checkpoint_registry() == 1
        assert rows(dsn, "SELECT seq, key_id FROM audit_checkpoints ORDER BY seq") == [
            (2, "k1"),
            (3, "k1"),
        ]
        assert store.verify().problems == []
        superuser_edit(dsn, "DELETE FROM audit_events WHERE stream = 'agent/team-a/coder'"
                       " AND seq = 3")  # fmt: skip
        [problem] = store.verify().problems
        assert problem.startswith("region eu stream agent/team-a/coder seq 3: deleted, the")
        assert problem.endswith("signed it as the head; the stream now ends at seq 2")
