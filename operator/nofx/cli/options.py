"""What the commands share: the options that name a cluster, a database and the audit keys, the
clients they build from them, and CliError for a mistake the person can fix."""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from nofx import kube
from nofx.apiserver import load_config
from nofx.mirror.keys import AuditKeyError, KeyRing
from nofx.mirror.store import Store


class CliError(Exception):
    """A mistake the person can fix; printed without a traceback."""


def cluster_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("-n", "--namespace", default="default")
    command.add_argument("--kubeconfig")


def database_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--database-url",
        default=os.environ.get("NOFX_DATABASE_URL"),
        help="Postgres DSN of the mirror (default: $NOFX_DATABASE_URL)",
    )
    command.add_argument(
        "--region",
        default=os.environ.get("NOFX_REGION", "local"),
        help="region written into every mirrored row (default: $NOFX_REGION or local)",
    )


def key_options(command: argparse.ArgumentParser, purpose: str) -> None:
    command.add_argument(
        "--audit-key-dir",
        default=os.environ.get("NOFX_AUDIT_KEY_DIR"),
        help=f"a directory of audit keys, one file per key id (a mounted Secret): {purpose}"
        " (default: $NOFX_AUDIT_KEY_DIR)",
    )


def keys(args: argparse.Namespace) -> KeyRing | None:
    if not args.audit_key_dir:
        return None
    try:
        return KeyRing.from_dir(args.audit_key_dir)
    except (AuditKeyError, OSError) as error:
        raise CliError(str(error)) from error


def open_store(args: argparse.Namespace, keys: KeyRing | None = None) -> Store:
    if not args.database_url:
        raise CliError("no database: pass --database-url or set NOFX_DATABASE_URL")
    return Store(args.database_url, args.region, keys=keys)


def kube_client(args: argparse.Namespace) -> kube.Kube:
    return kube.Kube(load_config("nofx-cli", args.kubeconfig))


def parse_time(text: str) -> datetime:
    """An ISO date or time; UTC unless it says otherwise."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
