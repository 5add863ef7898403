"""`nofx evidence export` and `nofx evidence verify`: signed evidence of finished Runs
(nofx.evidence)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nofx.cli.options import (
    CliError,
    cluster_options,
    database_options,
    key_options,
    keys,
    kube_client,
    open_store,
    parse_time,
)
from nofx.evidence import bundle, dsse, export


def add(commands: Any) -> None:
    evidence = commands.add_parser("evidence", help="signed evidence of finished Runs")
    evidence_actions = evidence.add_subparsers(dest="action", required=True)
    exporting = evidence_actions.add_parser("export", help="write a bundle for an auditor")
    exporting.add_argument("--run", help="one Run (in -n NAMESPACE); else every Run of a period")
    exporting.add_argument("--since", help="ISO date or time: Runs that finished since then")
    exporting.add_argument("--until", help="ISO date or time (default: now)")
    exporting.add_argument("--signing-key", required=True, help="ed25519 private key, PEM")
    exporting.add_argument("--out", required=True, help="folder to write the bundle into")
    cluster_options(exporting)
    database_options(exporting)
    key_options(exporting, "to check the MACs of the Runs' trails")
    exporting.set_defaults(handler=_evidence_export)
    check = evidence_actions.add_parser("verify", help="check a bundle offline")
    check.add_argument("bundle", help="the bundle's folder")
    check.add_argument("--key", required=True, help="ed25519 public key, PEM")
    check.set_defaults(handler=_evidence_verify)


def _evidence_export(args: argparse.Namespace) -> int:
    if bool(args.run) == bool(args.since):
        raise CliError("name one Run with --run, or a period with --since [--until]")
    key = dsse.load_private_key(Path(args.signing_key))
    with open_store(args, keys(args)) as store:
        if args.run:
            runs: list[tuple[str, str, str | None]] = [(args.namespace, args.run, None)]
        else:
            until = parse_time(args.until) if args.until else datetime.now(UTC)
            runs = [*store.finished_runs(parse_time(args.since), until)]
        for line in export.export(kube_client(args), store, runs, key, Path(args.out)):
            print(line)
    return 0


def _evidence_verify(args: argparse.Namespace) -> int:
    good, problems = bundle.verify(Path(args.bundle), dsse.load_public_key(Path(args.key)))
    for problem in problems:
        print(problem)
    print(f"{good} Run(s) verified, {len(problems)} problem(s)")
    return 1 if problems else 0
