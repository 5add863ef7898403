"""The commands that read the Postgres mirror: migrate its schema, a Run's audit timeline and the
verification of the chains, an account's usage, and an Agent's or Template's spec history (with
rollback to an earlier version)."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import Any

from nofx.api_errors import Conflict
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
from nofx.mirror.store import Store
from nofx.planner.tokens import money_text


def add(commands: Any) -> None:
    db = commands.add_parser("db", help="the Postgres mirror's schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending migrations (safe to repeat)")
    database_options(migrate)
    migrate.set_defaults(handler=_migrate)

    audit = commands.add_parser(
        "audit", help="a Run's audit timeline, or `audit verify [RUN]` to check the hash chains"
    )
    audit.add_argument("run", help="name of the Run, or `verify`")
    audit.add_argument("target", nargs="?", help="with verify: only this Run")
    audit.add_argument("-n", "--namespace", default="default")
    audit.add_argument("-o", "--output", choices=["table", "json"], default="table")
    database_options(audit)
    key_options(audit, "with verify: check MACs (without, only what needs no key)")
    audit.set_defaults(handler=_audit)

    usage = commands.add_parser(
        "usage", help="metered usage per day, account and agent, or per model (--by model)"
    )
    usage.add_argument("--account", help="one account (default: every account)")
    usage.add_argument("--since", required=True, help="ISO date or time, e.g. 2026-11-01")
    usage.add_argument(
        "--by",
        choices=["agent", "model"],
        default="agent",
        help="agent: wall time and total cost per agent; model: tokens and their cost per "
        "model, beside each agent's wall time",
    )
    usage.add_argument("-o", "--output", choices=["table", "json"], default="table")
    database_options(usage)
    usage.set_defaults(handler=_usage)

    for kind in ("agent", "template"):
        command = commands.add_parser(kind, help=f"{kind} history")
        actions = command.add_subparsers(dest="action", required=True)
        history = actions.add_parser("history", help="every recorded spec version")
        rollback = actions.add_parser("rollback", help="re-apply an earlier spec version")
        rollback.add_argument("--to", type=int, required=True, metavar="VERSION")
        for action in (history, rollback):
            action.add_argument("name")
            cluster_options(action)
            database_options(action)
            action.set_defaults(handler=_history if action is history else _rollback, kind=kind)


def _migrate(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        applied = store.migrate()
    print("applied: " + ", ".join(applied) if applied else "the schema is up to date")
    return 0


def _audit(args: argparse.Namespace) -> int:
    with open_store(args, keys(args) if args.run == "verify" else None) as store:
        return _audit_with(store, args)


def _audit_with(store: Store, args: argparse.Namespace) -> int:
    if args.run == "verify":
        stream = None
        if args.target:
            events = store.timeline(args.namespace, args.target)
            if not events:
                raise CliError(f"no audit events for Run {args.namespace}/{args.target}")
            stream = events[-1]["stream"]
        found = store.verify(stream)
        for line in [*found.problems, *(f"note: {note}" for note in found.notes())]:
            print(line)
        if found.problems:
            print(f"{len(found.problems)} problems: {found.summary()}")
            return 1
        verified = "every hash chain verifies" if stream is None else f"{stream} verifies"
        print(f"{verified}: {found.summary()}")
        return 0
    events = store.timeline(args.namespace, args.run)
    if not events:
        raise CliError(f"no audit events for Run {args.namespace}/{args.run}")
    if args.output == "json":
        print(json.dumps(events, default=str, indent=2))
        return 0
    print(f"{'SEQ':>4}  {'TIME':<29} {'REASON':<15} {'STEP':<16} {'ACTOR':<24} MESSAGE")
    for event in events:
        step = event["step"] or ""
        if event["item_index"] is not None:
            step += f"[{event['item_index']}]"
        at = event["at"].isoformat(timespec="milliseconds")
        actor = _actor(event["actor"])
        print(
            f"{event['seq']:>4}  {at:<29} {event['reason']:<15} {step:<16} {actor:<24} "
            f"{event['message']}"
        )
    return 0


def _actor(actor: str | None) -> str:
    """Unknown where no identity policy stamped the user (see nofx.api.identity)."""
    return actor or "(unknown)"


def _usage(args: argparse.Namespace) -> int:
    since = parse_time(args.since)
    with open_store(args) as store:
        if args.by == "model":
            rows = store.usage_by_model(args.account, since)
        else:
            rows = store.usage(args.account, since)
    if args.output == "json":
        print(json.dumps(rows, default=str, indent=2))
        return 0
    if args.by == "model":
        _usage_by_model(rows)
        return 0
    print(
        f"{'DAY':<11} {'ACCOUNT':<16} {'AGENT':<20} {'QUEUE':<16} {'ATTEMPTS':>8} "
        f"{'SECONDS':>10} {'QUEUED':>10} {'TOKEN COST':>14} {'COST':>14}"
    )
    for row in rows:
        queued = row["queued_seconds"]
        print(
            f"{row['day']!s:<11} {row['account']:<16} {row['agent']:<20} "
            f"{row['queue'] or '-':<16} {row['attempts']:>8} {row['wall_seconds']:>10.1f} "
            f"{'-' if queued is None else f'{queued:.1f}':>10} {_money(row['token_cost']):>14} "
            f"{_money(row['cost']):>14} {row['currency']}"
        )
    return 0


def _usage_by_model(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'DAY':<11} {'ACCOUNT':<16} {'AGENT':<20} {'MODEL':<24} {'ATTEMPTS':>8} "
        f"{'SECONDS':>9} {'INPUT':>12} {'OUTPUT':>12} {'CACHED':>12} {'COST':>14}"
    )
    for row in rows:
        model = row["model"] if row["model"] is not None else "(wall time)"
        print(
            f"{row['day']!s:<11} {row['account']:<16} {row['agent']:<20} {model:<24} "
            f"{row['attempts']:>8} {row['wall_seconds']:>9.1f} {row['input_tokens']:>12} "
            f"{row['output_tokens']:>12} {row['cached_tokens']:>12} {_money(row['cost']):>14} "
            f"{row['currency']}"
        )


def _money(amount: Decimal) -> str:
    """An amount as the API writes money: "0.957", not Postgres' "0.957000000"."""
    return money_text(Decimal(amount))


def _history(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        versions = store.versions(args.kind.capitalize(), args.namespace, args.name)
    if not versions:
        raise CliError(f"no recorded versions of {args.kind} {args.namespace}/{args.name}")
    print(f"{'VERSION':>7}  {'RECORDED':<26} {'SPEC HASH':<17} CHANGED BY")
    for stored in versions:
        at = stored.at.isoformat(timespec="seconds")
        print(f"{stored.version:>7}  {at:<26} {stored.spec_hash[:16]:<17} {_actor(stored.actor)}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    versions = {
        v[0]: v
        for v in open_store(args).versions(args.kind.capitalize(), args.namespace, args.name)
    }
    if args.to not in versions:
        known = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise CliError(f"{args.kind} {args.name} has no version {args.to} (versions: {known})")
    spec = versions[args.to].spec
    try:
        kube_client(args).replace_spec(f"{args.kind}s", args.namespace, args.name, spec)
    except LookupError as error:
        raise CliError(
            f"{args.kind} {args.namespace}/{args.name} not found in the cluster"
        ) from error
    except Conflict as error:
        raise CliError(f"{args.kind} {args.name} changed meanwhile; try again") from error
    print(f"{args.kind}.nofx.dev/{args.name} rolled back to version {args.to}")
    return 0
