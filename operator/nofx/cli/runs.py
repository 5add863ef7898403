"""The commands that act on the cluster: run the operator; approve a gated step or cancel a Run
the way a person would."""

from __future__ import annotations

import argparse
import os
from typing import Any

from nofx.cli.options import (
    CliError,
    cluster_options,
    database_options,
    key_options,
    keys,
    kube_client,
)


def add(commands: Any) -> None:
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
    operator.add_argument(
        "--kueue",
        action="store_true",
        help="step Jobs of Runs that name a Kueue LocalQueue (spec.queueName, the Template's, "
        "or the namespace's label nofx.dev/queue-name) are created suspended for Kueue to "
        "admit; needs Kueue installed and RBAC to read its Workloads",
    )
    operator.add_argument(
        "--account-budgets-namespace",
        help="read accounts' monthly budgets from the ConfigMaps labelled "
        "nofx.dev/account-budget in this namespace (the operator's own: tenants must not "
        "write there); needs --database-url, where the month's spend is read",
    )
    operator.add_argument(
        "--account-budgets-interval",
        type=float,
        default=30.0,
        help="seconds between two reads of the budgets and the spend",
    )
    database_options(operator)
    key_options(operator, "sign audit rows and checkpoints with the current key")
    operator.set_defaults(handler=_operator)

    for name, text in (("approve", "approve a gated step of a Run"), ("cancel", "cancel a Run")):
        command = commands.add_parser(name, help=text)
        command.add_argument("run", help="name of the Run")
        cluster_options(command)
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


def _operator(args: argparse.Namespace) -> int:
    if args.account_budgets_namespace and not args.database_url:
        raise CliError(
            "--account-budgets-namespace needs --database-url: an account's spend this month "
            "is read from the mirror's Postgres"
        )
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
            audit_keys=keys(args),
            max_child_run_depth=args.max_child_run_depth,
            max_child_runs=args.max_child_runs,
            pod_create_timeout=args.pod_create_timeout,
            kueue=args.kueue,
            account_budgets_namespace=args.account_budgets_namespace,
            account_budgets_interval=args.account_budgets_interval,
        )
    )
    return 0


def _cancel(args: argparse.Namespace) -> int:
    client = kube_client(args)
    if client.get("runs", args.namespace, args.run) is None:
        raise CliError(f"Run {args.namespace}/{args.run} not found")
    client.patch_spec("runs", args.namespace, args.run, {"cancel": True})
    print(f"run.nofx.dev/{args.run} cancel requested")
    return 0


def _approve(args: argparse.Namespace) -> int:
    client = kube_client(args)
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
