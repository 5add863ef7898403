"""`nofx console`: serve the read-only web console (nofx.console)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from nofx.cli.options import database_options


def add(commands: Any) -> None:
    console = commands.add_parser("console", help="serve the read-only web console")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on")
    console.add_argument("--port", type=int, default=int(os.environ.get("NOFX_CONSOLE_PORT", 8000)))
    console.add_argument("--kubeconfig", help="default: in-cluster, else KUBECONFIG")
    console.add_argument(
        "--namespace", action="append", default=[], help="read only this namespace (repeat)"
    )
    database_options(console)
    console.set_defaults(handler=_console)


def _console(args: argparse.Namespace) -> int:
    from nofx.console import app  # the web stack is imported only where it is served

    app.serve(
        app.Options(
            host=args.host,
            port=args.port,
            kubeconfig=args.kubeconfig,
            database_url=args.database_url,
            region=args.region,
            namespaces=tuple(args.namespace),
        )
    )
    return 0
