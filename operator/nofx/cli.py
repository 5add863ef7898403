"""`nofx`: run the operator; act on Runs the way a person would (approve, cancel); read the
Postgres mirror (audit, usage) and roll an Agent or Template back to an earlier spec; serve the
read-only web console."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException

from nofx import kube, sample_agent
from nofx.api_errors import Conflict
from nofx.mirror.store import Store


class CliError(Exception):
    """A mistake the person can fix; printed without a traceback."""


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
    parser = argparse.ArgumentParser(prog="nofx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    operator = commands.add_parser("operator", help="run the operator")
    operator.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeat)"
    )
    operator.add_argument("--kubeconfig", help="default: in-cluster, else KUBECONFIG")
    operator.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("NOFX_METRICS_PORT", 9090))
    )
    operator.add_argument(
        "--health-port", type=int, default=int(os.environ.get("NOFX_HEALTH_PORT", 8080))
    )
    operator.add_argument(
        "--standalone", action="store_true", help="no peering: only for a single replica"
    )
    operator.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds after which a replica that stopped answering is taken for dead",
    )
    operator.add_argument(
        "--max-child-run-depth",
        type=int,
        default=5,
        help="how deep child Runs may nest (a Run a person created is at depth 0)",
    )
    operator.add_argument(
        "--max-child-runs",
        type=int,
        default=500,
        help="how many child Runs one root Run may have, at every depth",
    )
    operator.add_argument(
        "--pod-create-timeout",
        type=float,
        default=60.0,
        help="seconds a step's Job may fail to create its Pod (e.g. a missing ServiceAccount) "
        "before the attempt fails",
    )
    _database_options(operator)
    operator.set_defaults(handler=_operator)

    for name, text in (("approve", "approve a gated step of a Run"), ("cancel", "cancel a Run")):
        command = commands.add_parser(name, help=text)
        command.add_argument("run", help="name of the Run")
        _cluster_options(command)
        if name == "approve":
            command.add_argument("--step", required=True, help="the step to approve")
            command.add_argument(
                "--by",
                help="who approves; by default you, as the API server authenticates you (with "
                "the nofx-approvals policy nothing else is accepted)",
            )
            command.add_argument("--message", help="why, or under which conditions")
            command.set_defaults(handler=_approve)
        else:
            command.set_defaults(handler=_cancel)

    db = commands.add_parser("db", help="the Postgres mirror's schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending migrations (safe to repeat)")
    _database_options(migrate)
    migrate.set_defaults(handler=_migrate)

    audit = commands.add_parser(
        "audit", help="a Run's audit timeline, or `audit verify [RUN]` to check the hash chains"
    )
    audit.add_argument("run", help="name of the Run, or `verify`")
    audit.add_argument("target", nargs="?", help="with verify: only this Run")
    audit.add_argument("-n", "--namespace", default="default")
    audit.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _database_options(audit)
    audit.set_defaults(handler=_audit)

    usage = commands.add_parser("usage", help="metered usage per agent and day")
    usage.add_argument("--account", required=True)
    usage.add_argument("--since", required=True, help="ISO date or time, e.g. 2026-11-01")
    usage.add_argument("-o", "--output", choices=["table", "json"], default="table")
    _database_options(usage)
    usage.set_defaults(handler=_usage)

    console = commands.add_parser("console", help="serve the read-only web console")
    console.add_argument("--host", default="127.0.0.1", help="address to listen on")
    console.add_argument("--port", type=int, default=int(os.environ.get("NOFX_CONSOLE_PORT", 8000)))
    console.add_argument("--kubeconfig", help="default: in-cluster, else KUBECONFIG")
    console.add_argument(
        "--namespace", action="append", default=[], help="read only this namespace (repeat)"
    )
    _database_options(console)
    console.set_defaults(handler=_console)

    sample = commands.add_parser(
        "sample-agent", help="the sample Agents' stand-in: report declared outputs"
    )
    sample_agent.add_arguments(sample)
    sample.set_defaults(handler=sample_agent.main)

    for kind in ("agent", "template"):
        command = commands.add_parser(kind, help=f"{kind} history")
        actions = command.add_subparsers(dest="action", required=True)
        history = actions.add_parser("history", help="every recorded spec version")
        rollback = actions.add_parser("rollback", help="re-apply an earlier spec version")
        rollback.add_argument("--to", type=int, required=True, metavar="VERSION")
        for action in (history, rollback):
            action.add_argument("name")
            _cluster_options(action)
            _database_options(action)
            action.set_defaults(handler=_history if action is history else _rollback, kind=kind)
    return parser


def _cluster_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("-n", "--namespace", default="default")
    command.add_argument("--kubeconfig")


def _database_options(command: argparse.ArgumentParser) -> None:
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


def _store(args: argparse.Namespace) -> Store:
    if not args.database_url:
        raise CliError("no database: pass --database-url or set NOFX_DATABASE_URL")
    return Store(args.database_url, args.region)


def _operator(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    from nofx import operator as operator_process  # imports Kopf handlers only when needed

    operator_process.run(
        operator_process.Options(
            namespaces=tuple(args.namespace),
            kubeconfig=args.kubeconfig,
            metrics_port=args.metrics_port,
            health_port=args.health_port,
            standalone=args.standalone,
            peering_lifetime=args.peering_lifetime,
            database_url=args.database_url,
            region=args.region,
            max_child_run_depth=args.max_child_run_depth,
            max_child_runs=args.max_child_runs,
            pod_create_timeout=args.pod_create_timeout,
        )
    )
    return 0


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


def _client(args: argparse.Namespace) -> kube.Kube:
    return kube.Kube(kube.load_config(args.kubeconfig))


def _cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    if client.get("runs", args.namespace, args.run) is None:
        raise CliError(f"Run {args.namespace}/{args.run} not found")
    client.patch_spec("runs", args.namespace, args.run, {"cancel": True})
    print(f"run.nofx.dev/{args.run} cancel requested")
    return 0


def _approve(args: argparse.Namespace) -> int:
    client = _client(args)
    run = client.get("runs", args.namespace, args.run)
    if run is None:
        raise CliError(f"Run {args.namespace}/{args.run} not found")
    approvals = list((run.get("spec") or {}).get("approvals") or [])
    if any(approval.get("step") == args.step for approval in approvals):
        print(f"run.nofx.dev/{args.run} step {args.step} was already approved")
        return 0
    steps = [s.get("name") for s in (run.get("status") or {}).get("steps") or []]
    if steps and args.step not in steps:
        raise CliError(f"Run {args.run} has no step {args.step} (steps: {', '.join(steps)})")
    approver = args.by or client.whoami()
    approval = {"step": args.step, "approvedBy": approver}
    if args.message:
        approval["message"] = args.message
    client.patch_spec("runs", args.namespace, args.run, {"approvals": [*approvals, approval]})
    print(f"run.nofx.dev/{args.run} step {args.step} approved by {approver}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    with _store(args) as store:
        applied = store.migrate()
    print("applied: " + ", ".join(applied) if applied else "the schema is up to date")
    return 0


def _audit(args: argparse.Namespace) -> int:
    with _store(args) as store:
        return _audit_with(store, args)


def _audit_with(store: Store, args: argparse.Namespace) -> int:
    if args.run == "verify":
        stream = None
        if args.target:
            events = store.timeline(args.namespace, args.target)
            if not events:
                raise CliError(f"no audit events for Run {args.namespace}/{args.target}")
            stream = events[-1]["stream"]
        problems = store.verify(stream)
        for problem in problems:
            print(problem)
        if problems:
            return 1
        print("every hash chain verifies" if stream is None else f"the chain of {stream} verifies")
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
    since = datetime.fromisoformat(args.since)
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    with _store(args) as store:
        rows = store.usage(args.account, since)
    if args.output == "json":
        print(json.dumps(rows, default=str, indent=2))
        return 0
    print(f"{'DAY':<11} {'AGENT':<20} {'ATTEMPTS':>8} {'SECONDS':>10} {'COST':>14}")
    for row in rows:
        print(
            f"{row['day']!s:<11} {row['agent']:<20} {row['attempts']:>8} "
            f"{row['wall_seconds']:>10.1f} {row['cost']!s:>10} {row['currency']}"
        )
    return 0


def _history(args: argparse.Namespace) -> int:
    with _store(args) as store:
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
        v[0]: v for v in _store(args).versions(args.kind.capitalize(), args.namespace, args.name)
    }
    if args.to not in versions:
        known = ", ".join(str(v) for v in sorted(versions)) or "none"
        raise CliError(f"{args.kind} {args.name} has no version {args.to} (versions: {known})")
    spec = versions[args.to].spec
    try:
        _client(args).replace_spec(f"{args.kind}s", args.namespace, args.name, spec)
    except LookupError as error:
        raise CliError(
            f"{args.kind} {args.namespace}/{args.name} not found in the cluster"
        ) from error
    except Conflict as error:
        raise CliError(f"{args.kind} {args.name} changed meanwhile; try again") from error
    print(f"{args.kind}.nofx.dev/{args.name} rolled back to version {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
