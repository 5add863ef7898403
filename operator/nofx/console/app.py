"""The console as an ASGI app (Starlette), and `serve()` that runs it with uvicorn.

Pages are plain functions: Starlette runs them in its thread pool, where the blocking
Kubernetes client and the Postgres pool belong."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
import uvicorn
from kubernetes.client.exceptions import ApiException
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from nofx.apiserver import load_config
from nofx.console import pages
from nofx.console.cluster import Cluster, ContinueExpired
from nofx.console.run_view import parse_time
from nofx.mirror.store import Store


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    kubeconfig: str | None
    database_url: str | None
    region: str
    namespaces: tuple[str, ...]


def templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nofx.console", "templates"),
        autoescape=True,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.globals["qs"] = _query_string
    return Jinja2Templates(env=env)


def create_app(console: pages.Console) -> Starlette:
    routes = [
        Route("/", lambda _: RedirectResponse("/runs"), name="home"),
        Route("/healthz", lambda _: PlainTextResponse("ok"), name="healthz"),
        Route("/runs", pages.runs, name="runs"),
        Route("/runs/{namespace}/{name}", pages.run, name="run"),
        Route("/runs/{namespace}/{name}/audit", pages.audit, name="audit"),
        Route("/registry", pages.registry, name="registry"),
        Route("/registry/{kind}/{namespace}/{name}", pages.history, name="history"),
        Route("/usage", pages.usage_page, name="usage"),
        Mount("/static", StaticFiles(packages=[("nofx.console", "static")]), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            ApiException: _kubernetes_error,
            ContinueExpired: _continue_expired,
            psycopg.Error: _database_error,
        },
    )
    app.state.console = console
    return app


def _error(request: Request, status: int, title: str, message: str) -> Response:
    return pages.render(request, "error.html", status, title=title, message=message)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return _error(request, error.status_code, "Not here", error.detail)


async def _kubernetes_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiException)
    if error.status == 403:
        message = "the console's ServiceAccount may not read this (see the chart's console RBAC)"
        return _error(request, 403, "Forbidden", message)
    return _error(request, 502, "The Kubernetes API failed", f"{error.status} {error.reason}")


async def _continue_expired(request: Request, error: Exception) -> Response:
    message = "the list changed too much since this page was read: start again from the first page"
    return _error(request, 410, "Page expired", message)


async def _database_error(request: Request, error: Exception) -> Response:
    return _error(request, 503, "Postgres is not answering", type(error).__name__)


def _when(value: Any) -> str:
    """A time as UTC to the second, from a datetime or an RFC 3339 string."""
    moment = parse_time(value) if isinstance(value, str) else value
    if not isinstance(moment, datetime):
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment.utcoffset() is not None else str(moment)


def _query_string(*params: dict[str, Any]) -> str:
    """'?a=1&b=2' of the parameters that have a value ('' when none has); later dicts win."""
    merged = {key: value for group in params for key, value in group.items()}
    kept = {key: value for key, value in merged.items() if value not in ("", None)}
    return "?" + urlencode(kept) if kept else ""


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def serve(options: Options) -> None:
    store = Store(options.database_url, options.region) if options.database_url else None
    console = pages.Console(
        cluster=Cluster(load_config("nofx-console", options.kubeconfig)),
        store=store,
        templates=templates(),
        namespaces=options.namespaces,
    )
    try:
        uvicorn.run(create_app(console), host=options.host, port=options.port, log_level="info")
    finally:
        if store is not None:
            store.close()
