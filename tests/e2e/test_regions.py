"""Two regions, each a control plane with its own operator and Postgres, and one global
Postgres subscribed to both by native logical replication: every row of both arrives exactly
once."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from nofx.mirror.store import Store
from nofx_dev.controlplane import ControlPlane
from nofx_dev.postgres import PostgresServer

from ..conftest import Kubectl, new_postgres
from .conftest import REPO, OperatorProcess, wait_for_phase
from .objects import agent, apply, run, step, template
from .test_store import MIRRORED, psql, rows, table_rows, wait_for

REGIONS = ("eu", "us")


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Everything the test starts, stopped in reverse order whatever happens."""
    with ExitStack() as stack:
        yield stack


def start_postgres(stack: ExitStack, **settings: str) -> PostgresServer:
    server = new_postgres(**settings)
    server.start()
    stack.callback(shutil.rmtree, server.directory.parent, ignore_errors=True)
    stack.callback(server.stop)
    return server


def test_two_regions_replicate_into_the_global_database_exactly_once(
    stack: ExitStack,
    start_plane: Callable[..., ControlPlane],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # More workers than the default: two subscriptions, each with table-sync workers.
    global_db = start_postgres(
        stack, max_logical_replication_workers="8", max_worker_processes="16"
    )
    with Store(global_db.dsn, "global") as store:
        store.migrate()
    regions = {}
    for region in REGIONS:
        plane = start_plane(f"{region}-plane", nodes=1)
        database = start_postgres(stack)
        with Store(database.dsn, region) as store:
            store.migrate()
        psql(database.dsn, REPO / "manifests/postgres/publication.sql")
        kubectl = Kubectl(plane.kubeconfig)
        operator = OperatorProcess(
            plane, tmp_path_factory.mktemp(f"{region}-operator"), "--standalone",
            "--database-url", database.dsn, "--region", region,
        )  # fmt: skip
        operator.start()
        stack.callback(operator.stop)
        regions[region] = (kubectl, database)
    conninfo = {
        f"{region}_conninfo": f"host=127.0.0.1 port={database.port} dbname=nofx user=nofx"
        for region, (_, database) in regions.items()
    }
    psql(global_db.dsn, REPO / "manifests/postgres/global-subscription.sql", **conninfo)

    for region, (kubectl, _) in regions.items():
        apply(
            kubectl,
            "default",
            agent("echo"),
            template("plan", [step("a"), step("b", dependsOn=["a"])]),
            *[run(f"{region}-{i}", templateRef={"name": "plan"}) for i in range(3)],
        )
    for region, (kubectl, _) in regions.items():
        for i in range(3):
            assert wait_for_phase(kubectl, "default", f"{region}-{i}", {"Succeeded"})

    def replicated() -> bool:
        regional = {
            table: sorted(
                row for _, database in regions.values() for row in table_rows(database.dsn, table)
            )
            for table in MIRRORED
        }
        pending = any(
            run_body.get("status", {}).get("audit", {}).get("pending")
            for kubectl, _ in regions.values()
            for run_body in kubectl.json("get", "runs", "-n", "default")["items"]
        )
        return not pending and all(
            sorted(table_rows(global_db.dsn, table)) == regional[table] for table in MIRRORED
        )

    wait_for(replicated, 60, "every row of eu and us in the global database")
    by_region = rows(global_db.dsn, "SELECT region, count(DISTINCT uid) FROM runs GROUP BY 1")
    assert sorted(by_region) == [("eu", 3), ("us", 3)]
    duplicates = rows(
        global_db.dsn,
        "SELECT region, stream, seq FROM audit_events GROUP BY 1, 2, 3 HAVING count(*) > 1",
    )
    assert duplicates == []
    with Store(global_db.dsn, "global") as store:
        assert store.verify().problems == []
