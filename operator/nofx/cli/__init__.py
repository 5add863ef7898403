"""`nofx`: run the operator; act on Runs the way a person would (approve, cancel); read the
Postgres mirror (audit, usage, history and rollback of Agents and Templates); export signed
evidence; serve the web console. One module per group of commands (runs, records, evidence,
console); options.py holds what they share."""

from __future__ import annotations

import argparse
import sys

from kubernetes.client.exceptions import ApiException

from nofx import sample_agent
from nofx.cli import console, evidence, records, runs
from nofx.cli.options import CliError

DESCRIPTION = (
    "Run the NOFX operator; approve or cancel Runs; read the Postgres mirror (audit trail, "
    "usage, spec history and rollback); export and verify signed evidence; serve the console."
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.handler(args)
        return result
    except CliError as error:
        print(f"nofx {args.command}: {error}", file=sys.stderr)
        return 1
    except ApiException as error:
        print(f"nofx {args.command}: {error.status} {error.reason}: {error.body}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nofx", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    runs.add(commands)
    records.add(commands)
    evidence.add(commands)
    console.add(commands)
    sample = commands.add_parser(
        "sample-agent", help="the sample Agents' stand-in: report declared outputs"
    )
    sample_agent.add_arguments(sample)
    sample.set_defaults(handler=sample_agent.main)

    return parser
