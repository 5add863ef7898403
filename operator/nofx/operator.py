"""The operator process: Kopf settings for a real cluster, the handlers of every kind, the
metrics server, and `run()` which `nofx operator` calls."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from nofx import kube, metrics
from nofx.apiserver import load_config
from nofx.mirror.keys import KeyRing
from nofx.mirror.store import Store
from nofx.mirror.writer import MirrorWriter
from nofx.peering import PEERING_NAME, Peering, own_identity
from nofx.planner.facts import Limits
from nofx.reconcilers import context, schedules, workloads  # noqa: F401 - Kopf's handlers
from nofx.reconcilers.account_budgets import AccountBudgets
from nofx.reconcilers.agents import agent_changed
from nofx.reconcilers.run_reconciler import RunReconciler
from nofx.reconcilers.schedules import ScheduleReconciler
from nofx.reconcilers.step_cache import StepCache
from nofx.reconcilers.step_pods import StepPods
from nofx.reconcilers.templates import template_changed
from nofx.reconcilers.watched import Watched
from nofx.workqueue import WorkerPool

log = logging.getLogger("nofx.operator")

IDENTITY = own_identity()  # this replica's, in Kopf's peering and in ours (nofx.peering)


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    kubeconfig: str | None = None
    metrics_port: int = 9090
    health_port: int = 8080
    standalone: bool = False  # no peering: for one replica, or a cluster without the CRD
    peering_lifetime: int = 60  # seconds a silent replica is still taken for alive
    database_url: str | None = None  # the Postgres mirror; none: no mirror
    region: str = "local"
    audit_keys: KeyRing | None = None  # none: audit rows keep plain sha256 hashes
    workers: int = 16
    max_child_run_depth: int = 5
    max_child_runs: int = 500
    pod_create_timeout: float = 60.0
    # Where accounts' monthly budget ConfigMaps live (needs the mirror); none: no such budgets.
    account_budgets_namespace: str | None = None
    account_budgets_interval: float = 30.0
    kueue: bool = False  # step Jobs of Runs that name a queue are Kueue workloads


OPTIONS = Options()


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf deep-copies every object on every event to compute diffs for on.create/update
    handlers (7 % of the operator's CPU under load). NOFX has only event handlers and indexes,
    which never read those diffs, so there is nothing to build or keep."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, {})

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    # Kopf waits this long for more events of one object before handling the last one; the
    # default (0.1 s) would sit on the start of every step Kueue admits.
    settings.batching.batch_window = 0.01
    # Watches end and restart cleanly before any proxy or the API server cuts them.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.persistence.diffbase_storage = NoDiffBase()
    # Kopf's own Events only for trouble; the Run reconciler posts the meaningful ones.
    settings.posting.level = logging.WARNING
    settings.peering.name = PEERING_NAME
    # Replicas of equal priority would all pause; distinct ones make exactly one of them active.
    settings.peering.priority = random.randint(1, 2**31 - 1)
    settings.peering.lifetime = OPTIONS.peering_lifetime
    settings.peering.standalone = OPTIONS.standalone
    settings.peering.clusterwide = not OPTIONS.namespaces
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=OPTIONS.workers, thread_name_prefix="reconcile")
    )
    client = kube.Kube(load_config("nofx-operator", OPTIONS.kubeconfig))
    limits = Limits(
        OPTIONS.max_child_run_depth,
        OPTIONS.max_child_runs,
        timedelta(seconds=OPTIONS.pod_create_timeout),
        kueue=OPTIONS.kueue,
    )
    mirror = budgets = step_cache = None
    if OPTIONS.database_url:
        # Opening the pool does not wait for Postgres: the operator runs while it is down.
        store = Store(OPTIONS.database_url, OPTIONS.region, keys=OPTIONS.audit_keys)
        mirror = MirrorWriter(store, client)
        mirror.start()
        step_cache = StepCache(store)  # cached steps keep their results in the mirror's database
        step_cache.start()
        if OPTIONS.account_budgets_namespace:
            budgets = AccountBudgets(
                client, store, OPTIONS.account_budgets_namespace, OPTIONS.account_budgets_interval
            )
            budgets.start()
    watched = Watched.of_cluster(client, OPTIONS.namespaces)
    if OPTIONS.kueue:
        watched.workloads = kwargs[workloads.INDEX]
    step_pods = StepPods(client, OPTIONS.namespaces)
    step_pods.start()
    reconciler = RunReconciler(client, limits, mirror, watched, budgets, step_cache, step_pods)
    reconciler.start(workers=OPTIONS.workers)
    scheduler = ScheduleReconciler(client, watched.runs)
    scheduler.start()
    ctx = context.OperatorContext(client, reconciler, mirror, watched, scheduler, None)
    ctx.keep_on(memo)
    follow_watches(ctx)
    if not OPTIONS.standalone:
        ctx.peering = follow_peering(ctx, settings.peering.priority)
    watched.start()  # after the handlers and the queues: what the first lists hold goes to them
    start_http_server(OPTIONS.metrics_port)
    log.info(
        "operator started",
        extra={
            "namespaces": list(OPTIONS.namespaces) or "all",
            "region": OPTIONS.region,
            "mirror": bool(OPTIONS.database_url),
            "kueue": OPTIONS.kueue,
            "account_budgets": OPTIONS.account_budgets_namespace if budgets else None,
            # Key ids only: the keys themselves never reach a log.
            "audit_keys": OPTIONS.audit_keys.ids if OPTIONS.audit_keys else None,
            "audit_signing_key": OPTIONS.audit_keys.current.id if OPTIONS.audit_keys else None,
        },
    )


def follow_watches(ctx: context.OperatorContext) -> None:
    """What a change the operator's watches see sets off."""

    def run_changed(kind: str, body: dict[str, Any]) -> None:
        ctx.runs.run_changed(kind, body)
        ctx.schedules.run_changed(kind, body)

    ctx.watched.runs.on_change = run_changed
    ctx.watched.agents.on_change = functools.partial(agent_changed, ctx)
    ctx.watched.templates.on_change = functools.partial(template_changed, ctx)


def follow_peering(ctx: context.OperatorContext, priority: int) -> Peering:
    """The reconcilers' pools and the watches' handlers stand by until the peering object says
    otherwise, as Kopf does, and follow it from then on."""
    pools: tuple[WorkerPool[Any, Any], ...] = (ctx.runs.workers, ctx.schedules.workers)
    for pool in pools:
        pool.set_paused(True)
    ctx.watched.set_handling(False)
    loop = asyncio.get_running_loop()

    def active(now: bool) -> None:
        for pool in pools:
            loop.call_soon_threadsafe(pool.set_paused, not now)
        ctx.watched.set_handling(now)  # after: what it tells reaches running pools

    peering = Peering(ctx.kube, IDENTITY, priority, OPTIONS.namespaces, active)
    peering.start()
    return peering


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    ctx = context.of(memo)
    if ctx.peering is not None:
        ctx.peering.stop()
    await ctx.runs.stop()
    await ctx.schedules.stop()
    ctx.watched.stop()
    if ctx.runs.step_pods is not None:
        ctx.runs.step_pods.stop()
    if ctx.runs.account_budgets is not None:
        ctx.runs.account_budgets.stop()
    if ctx.runs.step_cache is not None:
        ctx.runs.step_cache.stop()
    if ctx.mirror is not None:
        ctx.mirror.stop()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a Pod its service account, elsewhere KUBECONFIG (read now, not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="runs")
def runs_held(**_: Any) -> int:
    """Shown by /healthz: how many Runs this replica has reconciled and holds."""
    return metrics.runs_held()


# Python's cyclic garbage collector, by default, looks through the young objects every 700
# allocations and now and then through everything, startup's modules and schemas included:
# decoding one watch event allocates hundreds of dicts and lists, nearly all freed by reference
# counting anyway. For 170 Runs: 207 CPU ms in collections (4 % of the operator's), 80 after,
# 44 of them the collection at startup.
YOUNG_COLLECTION_AFTER = 20_000  # allocations
OLDER_COLLECTIONS_AFTER = 20  # collections of the generation below


def settle_garbage_collector() -> None:
    """What startup built (modules, schemas, clients) lives as long as the process: frozen, so
    no full collection looks through it again; collections of young objects are rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_AFTER, OLDER_COLLECTIONS_AFTER, OLDER_COLLECTIONS_AFTER)


def run(options: Options) -> None:
    global OPTIONS
    OPTIONS = options
    settle_garbage_collector()
    if options.kueue:
        workloads.register()
    kopf.configure(log_format=kopf.LogFormat.JSON, log_refkey="k8s")
    # Kopf logs every handled event at INFO; the reconcilers log what actually changed.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        clusterwide=not options.namespaces,
        namespaces=list(options.namespaces),
        standalone=options.standalone,
        peering_name=None if options.standalone else PEERING_NAME,
        identity=IDENTITY,  # type: ignore[arg-type]  # Kopf's Identity: a str NewType it does not export
        liveness_endpoint=f"http://0.0.0.0:{options.health_port}/healthz",
    )
