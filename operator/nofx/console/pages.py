"""The console's pages: each reads what it shows (Kubernetes through Cluster, Postgres through
the mirror's Store), hands it to the pure view functions and renders a template. Every page is
a plain GET whose query string holds its state, so every page can be linked to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from nofx.console import dag, diff, paging, run_view, usage
from nofx.console.cluster import Cluster
from nofx.mirror.store import Store

PAGE_SIZES = (20, 50, 100)
RUN_PHASES = ("Pending", "Queued", "Running", "WaitingApproval", "Succeeded", "Failed", "Cancelled")
USAGE_DAYS = 30  # the usage page's default period


@dataclass(frozen=True)
class Console:
    """What every page reads from; made once when the console starts."""

    cluster: Cluster
    store: Store | None  # None: no database given, the Postgres pages say so
    templates: Jinja2Templates
    namespaces: tuple[str, ...] = ()  # only these (the chart's namespaced RBAC); () for all


def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    return _console(request).templates.TemplateResponse(
        request, template, context, status_code=status_code
    )


def _namespace(console: Console, wanted: str) -> str:
    """The namespace to read: with a list of served namespaces, one of them (the first by
    default), since the console may not read others."""
    if not console.namespaces:
        return wanted
    if not wanted:
        return console.namespaces[0]
    if wanted not in console.namespaces:
        served = ", ".join(console.namespaces)
        raise HTTPException(404, f"this console serves the namespaces {served}")
    return wanted


def _store(console: Console) -> Store:
    if console.store is None:
        raise HTTPException(503, "no database: start nofx console with --database-url")
    return console.store


def _cursor(request: Request) -> paging.Cursor:
    token, skip = request.query_params.get("continue", ""), request.query_params.get("skip", "0")
    return paging.Cursor(token, int(skip) if skip.isdigit() else 0)


def runs(request: Request) -> Response:
    console, query = _console(request), request.query_params
    filters = paging.RunFilters(
        namespace=_namespace(console, query.get("namespace", "")),
        phase=query.get("phase", "") if query.get("phase") in RUN_PHASES else "",
        template=query.get("template", ""),
        account=query.get("account", ""),
    )
    limit = int(query["limit"]) if query.get("limit", "").isdigit() else PAGE_SIZES[1]
    limit = min(max(limit, 1), PAGE_SIZES[-1])
    page = paging.fill_page(
        lambda token, chunk: console.cluster.list_chunk("runs", filters.namespace, token, chunk),
        _cursor(request),
        limit,
        filters.keep if filters.beyond_namespace else None,
    )
    return render(
        request, "runs.html", filters=filters, page=page, limit=limit, phases=RUN_PHASES,
        page_sizes=PAGE_SIZES, first_page=not query.get("continue") and not query.get("skip"),
    )  # fmt: skip


def run(request: Request) -> Response:
    console = _console(request)
    namespace = _namespace(console, request.path_params["namespace"])
    name = request.path_params["name"]
    body = console.cluster.get("runs", namespace, name)
    if body is None:
        message = f"no Run {namespace}/{name}; its audit trail may still be in Postgres"
        raise HTTPException(404, message)
    jobs = console.cluster.run_jobs(body)
    steps, finally_steps = dag.plan(body)

    def link(step: Mapping[str, Any]) -> str:
        children = [
            entry["childRunName"]
            for entry in (body.get("status") or {}).get("steps") or []
            if entry["name"] == step["name"] and entry.get("childRunName")
        ]
        if len(children) == 1:
            return str(request.url_for("run", namespace=namespace, name=children[0]).path)
        return f"#{run_view.step_anchor(step['name'])}"

    source = dag.dot_source(body, link)
    graph = dag.render_svg(source, f"Steps of Run {name} and their dependencies, coloured by phase")
    return render(
        request, "run.html", run=body, status=body.get("status") or {}, graph=graph,
        bars=run_view.gantt(body, jobs, datetime.now(UTC)),
        steps=run_view.step_rows(body, [*steps, *finally_steps], jobs),
        gates=run_view.approval_gates(body, [*steps, *finally_steps]),
        events=console.cluster.run_events(body), colours=dag.PHASE_COLOURS,
    )  # fmt: skip


def audit(request: Request) -> Response:
    console = _console(request)
    namespace = _namespace(console, request.path_params["namespace"])
    name = request.path_params["name"]
    store = _store(console)
    events = store.timeline(namespace, name)
    streams = list(dict.fromkeys(event["stream"] for event in events))
    checks = {stream: store.verify(stream).problems for stream in streams}
    return render(
        request, "audit.html", namespace=namespace, name=name, events=events, checks=checks,
        region=store.region,
    )  # fmt: skip


def registry(request: Request) -> Response:
    console, query = _console(request), request.query_params
    namespace = _namespace(console, query.get("namespace", "")) or "default"
    kind = "Agent" if query.get("kind") == "Agent" else "Template"
    plural = f"{kind.lower()}s"
    page = paging.fill_page(
        lambda token, chunk: console.cluster.list_chunk(plural, namespace, token, chunk),
        _cursor(request),
        PAGE_SIZES[1],
    )
    return render(request, "registry.html", namespace=namespace, kind=kind, page=page)


def history(request: Request) -> Response:
    console, query = _console(request), request.query_params
    kind = request.path_params["kind"]
    if kind not in ("Agent", "Template"):
        raise HTTPException(404, "the registry keeps Agents and Templates")
    namespace = _namespace(console, request.path_params["namespace"])
    name = request.path_params["name"]
    versions = _store(console).versions(kind, namespace, name)
    by_number = {v.version: v for v in versions}
    newest = versions[-1].version if versions else 0
    to = int(query["to"]) if query.get("to", "").isdigit() else newest
    since = int(query["from"]) if query.get("from", "").isdigit() else max(to - 1, 1)
    lines = None
    if since in by_number and to in by_number:
        lines = diff.spec_diff(by_number[since].spec, by_number[to].spec)
    return render(
        request, "history.html", kind=kind, namespace=namespace, name=name, versions=versions,
        since=since, to=to, lines=lines,
    )  # fmt: skip


def usage_page(request: Request) -> Response:
    console, query = _console(request), request.query_params
    account = query.get("account", "").strip()
    try:
        since = date.fromisoformat(query.get("since", ""))
    except ValueError:
        since = datetime.now(UTC).date() - timedelta(days=USAGE_DAYS)
    rows: list[dict[str, Any]] = []
    tokens: list[dict[str, Any]] = []
    if account:
        start = datetime(since.year, since.month, since.day, tzinfo=UTC)
        store = _store(console)
        rows = store.usage(account, start)
        tokens = [row for row in store.usage_by_model(account, start) if row["model"] is not None]
    return render(
        request, "usage.html", account=account, since=since, rows=rows, tokens=tokens,
        totals=usage.totals(rows), chart=usage.chart_svg(rows, account),
    )  # fmt: skip
