"""`nofx`: run the operator, and act on Runs the way a person would (approve, cancel)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from kubernetes.client.exceptions import ApiException

from nofx import kube


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nofx", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    operator = commands.add_parser("operator", help="run the operator")
    operator.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeat)"
    )
    operator.add_argument("--kubeconfig", help="default: in-cluster, else KUBECONFIG")
    operator.add_argument("--metrics-port", type=int, default=9090)
    operator.add_argument("--health-port", type=int, default=8080)
    operator.add_argument(
        "--standalone", action="store_true", help="no peering: only for a single replica"
    )
    operator.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds after which a replica that stopped answering is taken for dead",
    )

    for name, text in (("approve", "approve a gated step of a Run"), ("cancel", "cancel a Run")):
        command = commands.add_parser(name, help=text)
        command.add_argument("run", help="name of the Run")
        command.add_argument("-n", "--namespace", default="default")
        command.add_argument("--kubeconfig")
        if name == "approve":
            command.add_argument("--step", required=True, help="the step to approve")
            command.add_argument("--by", default=getpass.getuser(), help="who approves")
            command.add_argument("--message", help="why, or under which conditions")

    args = parser.parse_args(argv)
    if args.command == "operator":
        if args.kubeconfig:
            # Kopf logs in through the same file; the client library reads this at import.
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
            )
        )
        return 0
    client = kube.Kube(kube.load_config(args.kubeconfig))
    try:
        if args.command == "cancel":
            return _cancel(client, args.namespace, args.run)
        return _approve(client, args.namespace, args.run, args.step, args.by, args.message)
    except ApiException as error:
        print(f"nofx {args.command}: {error.reason}: {error.body}", file=sys.stderr)
        return 1


def _cancel(client: kube.Kube, namespace: str, name: str) -> int:
    if client.get("runs", namespace, name) is None:
        print(f"nofx cancel: Run {namespace}/{name} not found", file=sys.stderr)
        return 1
    client.patch_spec("runs", namespace, name, {"cancel": True})
    print(f"run.nofx.dev/{name} cancel requested")
    return 0


def _approve(
    client: kube.Kube, namespace: str, name: str, step: str, by: str, message: str | None
) -> int:
    run = client.get("runs", namespace, name)
    if run is None:
        print(f"nofx approve: Run {namespace}/{name} not found", file=sys.stderr)
        return 1
    spec = run.get("spec") or {}
    approvals = list(spec.get("approvals") or [])
    if any(approval.get("step") == step for approval in approvals):
        print(f"run.nofx.dev/{name} step {step} was already approved")
        return 0
    steps = [s.get("name") for s in (run.get("status") or {}).get("steps") or []]
    if steps and step not in steps:
        print(
            f"nofx approve: Run {name} has no step {step} (steps: {', '.join(steps)})",
            file=sys.stderr,
        )
        return 1
    approval = {"step": step, "approvedBy": by}
    if message:
        approval["message"] = message
    client.patch_spec("runs", namespace, name, {"approvals": [*approvals, approval]})
    print(f"run.nofx.dev/{name} step {step} approved by {by}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
